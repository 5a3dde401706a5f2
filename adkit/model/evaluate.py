"""``adkit evaluate``: in-context reinforcement learning on held-out tasks.

The DICP protocol: every held-out task, 50 episodes, sampled actions, several
evaluation seeds (streams) per task, all tasks x seeds stepped together in one
batched environment. The model's weights never change; whatever improves over
the episodes is learned from the context.

Context backends (the same decisions, different cost):

* ``cache`` (default): a rolling key/value cache, O(n_transit) per step; exactly
  the sliding-window model the trainer fits (see :mod:`adkit.model`).
* ``recompute``: DICP's way, the last ``n_transit`` transitions re-encoded from
  scratch at every step, O(n_transit^2) per step.
* with a ``compressor`` (training-free compression): at every step the last
  ``n_transit`` transitions are compressed to the compressor's budget (see
  :mod:`adkit.compress.context`) and the kept ones re-encoded, O(budget^2) per step plus,
  for attention-based strategies, the full-window pass that scores them.

The first action of a stream has no transition to condition on and is drawn
uniformly at random (as a fresh source learner's would be).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adkit import envs
from adkit.compress.context import compressed_logits
from adkit.data.loop import record
from adkit.data.tokens import Tokens
from adkit.io import atomic_path
from adkit.run import Run

CSV_FIELDS = ["task", "seed", "episode", "return", "optimal"]


class Trajectories:
    """Every transition of every evaluation stream so far, as tensors, for contexts at any decision."""

    def __init__(self, n: int, steps: int):
        self.states = torch.zeros(n, steps + 1, 2, dtype=torch.long)  # s_0..s_T (the last is the query)
        self.actions = torch.zeros(n, steps, dtype=torch.long)
        self.rewards = torch.zeros(n, steps)
        self.next_states = torch.zeros(n, steps, 2, dtype=torch.long)
        self.episode_return = torch.zeros(n, steps)  # the episode's return up to and including each step
        self.ended = torch.zeros(n, dtype=torch.bool)  # the last recorded step ended its episode

    def add(self, t: int, actions, rewards, next_states, dones) -> None:
        """Record step ``t``'s transition of every stream (numpy arrays ``(n, ·)``)."""
        self.actions[:, t], self.rewards[:, t] = torch.from_numpy(actions), torch.from_numpy(rewards)
        self.next_states[:, t] = torch.from_numpy(next_states)
        before = self.episode_return[:, t - 1] * ~self.ended if t else 0.0
        self.episode_return[:, t] = before + self.rewards[:, t]
        self.ended = torch.from_numpy(np.asarray(dones, bool))

    def token(self, k: int) -> tuple[torch.Tensor, ...]:
        """The inputs of :meth:`ADTransformer.step` (:data:`STEP_INPUTS`) for transition ``k`` of every
        stream (token ``k``)."""
        return (self.states[:, k], self.actions[:, k], self.rewards[:, k], self.next_states[:, k],
                self.states[:, k + 1], self.episode_return[:, k])

    def window(self, t: int, size: int) -> Tokens:
        """The context of decision ``t``: tokens of the last ``size`` transitions before it ``(B, L, ·)``."""
        lo = max(0, t - size)
        return Tokens(states=self.states[:, lo:t], actions=self.actions[:, lo:t], rewards=self.rewards[:, lo:t],
                      next_states=self.next_states[:, lo:t], queries=self.states[:, lo + 1:t + 1],
                      positions=torch.arange(lo, t).expand(self.actions.shape[0], t - lo),
                      episode_return=self.episode_return[:, lo:t])


@dataclass
class RolloutResult:
    returns: np.ndarray  # (n_tasks, n_seeds, n_episodes) episode returns
    tasks: list  # task tuples, in row order
    seeds: list  # evaluation seeds, in column order
    optimal: np.ndarray  # (n_tasks,) optimal return of each task
    seconds: float  # wall-clock of the rollout
    steps: int  # environment steps per stream
    trajectories: Trajectories | None = None  # every transition of every stream (contexts at any decision)

    def rows(self) -> list[dict]:
        """Tidy rows ``task, seed, episode, return, optimal`` (episodes counted from 1)."""
        out = []
        for i, task in enumerate(self.tasks):
            for j, seed in enumerate(self.seeds):
                for e, ret in enumerate(self.returns[i, j]):
                    out.append({"task": ",".join(map(str, task)), "seed": seed, "episode": e + 1,
                                "return": float(ret), "optimal": float(self.optimal[i])})
        return out

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(self.rows())
        return path


def check_model_for(model, env_name: str, context: int | None = None) -> None:
    """Fail with a message (not a shape error) if ``model`` cannot run ``env_name`` at ``context``."""
    want = envs.spec(env_name).name
    if want != model.env:
        raise ValueError(f"this checkpoint was trained on {model.env!r}; it cannot be evaluated on {want!r}")
    if context is not None and context > model.cfg.n_transit:
        raise ValueError(f"context {context} is longer than the {model.cfg.n_transit} transitions the model "
                         f"attends to (n_transit); retrain with a larger n_transit")


class ModelLearner:
    """The model acting in context in :func:`adkit.data.loop.record`: each decision sees what the
    streams did so far through the rolling cache, a re-encoded window, or a compressed window."""

    def __init__(self, model, n: int, steps: int, n_actions: int, generator: torch.Generator, greedy: bool,
                 backend: str, size: int, compressor, scorer):
        self.model, self.gen, self.greedy, self.n_actions = model, generator, greedy, n_actions
        self.backend, self.size, self.compressor, self.scorer = backend, size, compressor, scorer
        self.traj, self.cache = Trajectories(n, steps), model.new_cache(n)

    def logits(self, t: int) -> torch.Tensor:
        """``(n, A)`` action logits of decision ``t`` (t >= 1)."""
        tr = self.traj
        if self.compressor is not None:
            return compressed_logits(self.model, tr.window(t, self.size), self.compressor, self.gen, self.scorer)[0]
        if self.backend == "cache":
            return self.model.step(self.cache, *tr.token(t - 1))
        return self.model(**tr.window(t, self.size))[:, -1]

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        self.traj.states[:, t] = torch.from_numpy(obs)
        n = obs.shape[0]
        if t == 0:  # nothing to condition on yet: uniform, as a fresh source learner would
            return torch.randint(0, self.n_actions, (n,), generator=self.gen).numpy()
        logits = self.logits(t)
        if self.greedy:
            return logits.argmax(-1).numpy()
        return torch.multinomial(logits.softmax(-1), 1, generator=self.gen)[:, 0].numpy()

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t: int) -> None:
        self.traj.add(t, actions, rewards, next_obs, dones)


@torch.no_grad()
def rollout(model, env_name: str, tasks, seeds=(0, 1, 2), episodes: int = 50, greedy: bool = False,
            backend: str = "cache", context: int | None = None, compressor=None, scorer=None,
            progress: bool = True) -> RolloutResult:
    """Run the model in context on ``tasks`` x ``seeds`` streams for ``episodes`` episodes each.

    ``compressor`` (an :mod:`adkit.compress` strategy) compresses the context at
    every decision; it implies re-encoding, whatever ``backend`` says. Attention-based
    strategies score with ``scorer``'s attention (default: the model's own).
    """
    check_model_for(model, env_name, context)
    if backend not in ("cache", "recompute"):
        raise ValueError(f"backend must be 'cache' or 'recompute', got {backend!r}")
    model.eval()
    tasks = [tuple(int(v) for v in np.atleast_1d(t)) for t in tasks]
    seeds = list(seeds)
    env = envs.make(env_name, tasks, streams=len(seeds))
    n, steps = env.num_envs, episodes * env.spec_.horizon
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seeds).generate_state(1)[0]))
    learner = ModelLearner(model, n, steps, env.spec_.n_actions, gen, greedy, backend,
                           context or model.cfg.n_transit, compressor, scorer)
    t0 = time.perf_counter()
    rewards = record(env, learner, steps, seed=seeds[0], progress=progress, desc="evaluate")["rewards"]  # (n, steps)
    seconds = time.perf_counter() - t0
    returns = rewards.reshape(len(tasks), len(seeds), episodes, env.spec_.horizon).sum(-1)
    optimal = np.array([envs.optimal_return(env_name, t) for t in tasks])
    return RolloutResult(returns, tasks, seeds, optimal, seconds, steps, learner.traj)


def evaluate_run(run: Run, model, progress: bool = True) -> RolloutResult:
    """Let ``model`` learn in context on the run's held-out tasks with ``run.cfg.eval``; writes
    ``eval/returns.csv``."""
    e = run.cfg.eval
    res = rollout(model, run.cfg.env.name, run.test_tasks, seeds=range(e.seeds), episodes=e.episodes,
                  greedy=e.greedy, progress=progress)
    res.write_csv(run.returns)
    return res


def seed_table(results: dict[int, RolloutResult]) -> pd.DataFrame:
    """One row of :func:`summary` per training seed, plus a ``mean`` and a ``std`` row (sample std, ddof=1)."""
    table = pd.DataFrame([{"seed": seed, **summary(res)} for seed, res in results.items()]).set_index("seed")
    numbers = table.astype(float)
    return pd.concat([table, numbers.mean().to_frame("mean").T, numbers.std(ddof=1).to_frame("std").T])


def summary(res: RolloutResult, last: int = 10) -> dict:
    """Headline numbers: first-episode and last-``last``-episode return, absolute and as share of
    optimal; the episode where the mean curve reaches 80% of optimal; and how fast each (task, seed)
    first finds reward: the median first rewarded episode and the share never rewarded."""
    per_task_opt = res.optimal[:, None, None]
    share = res.returns / per_task_opt  # (n_tasks, n_seeds, n_episodes)
    curve = res.returns.mean((0, 1))
    reach = np.flatnonzero(share.mean((0, 1)) >= 0.8)
    rewarded = res.returns > 0  # (n_tasks, n_seeds, n_episodes)
    n_episodes = res.returns.shape[-1]
    first = np.where(rewarded.any(-1), rewarded.argmax(-1) + 1, n_episodes + 1)  # (n_tasks, n_seeds); never: n + 1
    return {"first_episode": float(curve[0]), "last_mean": float(res.returns[..., -last:].mean()),
            "optimal_mean": float(res.optimal.mean()), "first_share": float(share[..., 0].mean()),
            "last_share": float(share[..., -last:].mean()),
            "episodes_to_80pct": int(reach[0]) + 1 if len(reach) else None,
            "first_reward_median": float(np.median(first)), "never_rewarded": float((first > n_episodes).mean())}
