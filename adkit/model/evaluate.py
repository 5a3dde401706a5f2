"""``adkit evaluate``: in-context reinforcement learning on held-out tasks.

The DICP protocol: every held-out task, 50 episodes, sampled actions, several
evaluation seeds (streams) per task, all tasks x seeds stepped together in one
batched environment. The model's weights never change; whatever improves over
the episodes is learned from the context.

Contexts:

* ``cache`` (default), **the full context** everywhere in adkit: a rolling key/value
  cache, O(n_transit) per step; exactly the sliding-window model the trainer fits (see
  :mod:`adkit.model`). Through the layers a decision sees up to
  ``n_layer x (n_transit - 1) + 1`` transitions back.
* ``recompute``: DICP's hard context, a separate baseline: exactly the last ``n_transit``
  transitions re-encoded from scratch at every step, O(n_transit^2) per step (another
  function than the cache's once the model has 2 or more layers and the stream outgrows
  the window).
* with a ``compressor`` (training-free compression), ``kv`` says how:

  * ``reencode``: at every step the last ``n_transit`` transitions are compressed to the
    compressor's budget (see :mod:`adkit.compress.context`) and the kept ones re-encoded,
    O(budget^2) per step plus, for attention-based strategies, the full-window pass that
    scores them;
  * ``evict``: an evicting key/value cache of at most budget transitions per layer
    (:mod:`adkit.compress.evict`), O(budget) per step; attention-scored strategies score
    with the attention the decision computes anyway.

Every rollout also measures what a decision costs (:class:`DecisionCost`): the median
wall-clock of its batched decisions, the peak memory of one (what persists between
decisions plus its activations) and its FLOPs.

The first action of a stream has no transition to condition on and is drawn
uniformly at random (as a fresh source learner's would be).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adkit import envs
from adkit.compress.context import compressed_logits, scoring_rows
from adkit.compress.cost import decision_flops, peak_allocated_mb
from adkit.compress.evict import KV
from adkit.data.loop import record
from adkit.data.tokens import Tokens
from adkit.io import atomic_path, write_text
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


@dataclass(frozen=True)
class DecisionCost:
    """What one batched decision of a rollout cost, measured on that rollout."""

    mode: str  # "full cache" (the full context), "recompute" (DICP's hard context), "reencode" or "evict"
    budget: int | None  # transitions a compressed decision keeps (None: the full window)
    decision_ms: float  # median wall-clock of the rollout's decisions, all streams batched
    peak_mb: float  # what persists between decisions (cache, or stored window) + one decision's peak activations
    flops_per_decision: int  # the whole decision per stream: projections, attention, MLP, head (and scoring)
    streams: int  # rows decided together
    threads: int  # torch intra-op threads


@dataclass
class RolloutResult:
    returns: np.ndarray  # (n_tasks, n_seeds, n_episodes) episode returns
    tasks: list  # task tuples, in row order
    seeds: list  # evaluation seeds, in column order
    optimal: np.ndarray  # (n_tasks,) optimal return of each task
    seconds: float  # wall-clock of the rollout
    steps: int  # environment steps per stream
    trajectories: Trajectories | None = None  # every transition of every stream (contexts at any decision)
    cost: DecisionCost | None = None  # what a decision cost

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
    streams did so far through the rolling cache, a re-encoded window, a compressed window, or an
    evicting cache; every decision is timed."""

    def __init__(self, model, n: int, steps: int, n_actions: int, generator: torch.Generator, greedy: bool,
                 backend: str, size: int, compressor, scorer, kv: str = "reencode"):
        self.model, self.gen, self.greedy, self.n_actions = model, generator, greedy, n_actions
        self.backend, self.size, self.compressor, self.scorer = backend, size, compressor, scorer
        if compressor is None:
            self.mode = "full cache" if backend == "cache" else "recompute"
        else:
            self.mode = kv
        self.traj = Trajectories(n, steps)
        self.cache = (model.new_evicting_cache(n, compressor, generator=generator)
                      if self.mode == "evict" else model.new_cache(n))
        self.seconds: list[float] = []  # wall-clock of every decision

    def logits(self, t: int) -> torch.Tensor:
        """``(n, A)`` action logits of decision ``t`` (t >= 1)."""
        tr = self.traj
        if self.mode == "reencode":
            return compressed_logits(self.model, tr.window(t, self.size), self.compressor, self.gen, self.scorer)[0]
        if self.mode in ("full cache", "evict"):
            return self.model.step(self.cache, *tr.token(t - 1))
        return self.model(**tr.window(t, self.size))[:, -1]

    def cost(self, t: int) -> DecisionCost:
        """The rollout's decision cost; the peak memory from one more decision ``t`` (the last
        transition, not yet decided on)."""
        if self.mode in ("full cache", "evict"):
            resident = self.cache.nbytes()
        else:  # the window of transitions a re-encoding decision reads
            resident = sum(v.numel() * v.element_size() for v in self.traj.window(t, self.size).values())
        peak = resident / 2**20 + peak_allocated_mb(lambda: self.logits(t))
        c = self.compressor
        kept = None if c is None else c.budget
        scored = c is not None and c.needs_attention
        flops = decision_flops(self.model.cfg, self.n_actions, kept, scored, scoring_rows(c) if scored else None,
                               evict=self.mode == "evict")
        return DecisionCost(self.mode, kept, 1000 * statistics.median(self.seconds), peak, flops,
                            len(self.traj.ended), torch.get_num_threads())

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        self.traj.states[:, t] = torch.from_numpy(obs)
        n = obs.shape[0]
        if t == 0:  # nothing to condition on yet: uniform, as a fresh source learner would
            return torch.randint(0, self.n_actions, (n,), generator=self.gen).numpy()
        t0 = time.perf_counter()
        logits = self.logits(t)
        self.seconds.append(time.perf_counter() - t0)
        if self.greedy:
            return logits.argmax(-1).numpy()
        return torch.multinomial(logits.softmax(-1), 1, generator=self.gen)[:, 0].numpy()

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t: int) -> None:
        self.traj.add(t, actions, rewards, next_obs, dones)


@torch.no_grad()
def rollout(model, env_name: str, tasks, seeds=(0, 1, 2), episodes: int = 50, greedy: bool = False,
            backend: str = "cache", context: int | None = None, compressor=None, scorer=None,
            progress: bool = True, kv: str = "reencode") -> RolloutResult:
    """Run the model in context on ``tasks`` x ``seeds`` streams for ``episodes`` episodes each.

    ``compressor`` (an :mod:`adkit.compress` strategy) compresses the context at every
    decision, whatever ``backend`` says, by re-encoding the kept transitions (``kv="reencode"``;
    attention-based strategies score with ``scorer``'s attention, default the model's own) or
    through an evicting key/value cache (``kv="evict"``; scored by the model's own attention).
    """
    check_model_for(model, env_name, context)
    if backend not in ("cache", "recompute"):
        raise ValueError(f"backend must be 'cache' or 'recompute', got {backend!r}")
    if kv not in KV:
        raise ValueError(f"kv must be one of {KV}, got {kv!r}")
    if kv == "evict" and scorer is not None:
        raise ValueError("an evicting cache scores with the attention the decision computes; it takes no scorer")
    model.eval()
    tasks = [tuple(int(v) for v in np.atleast_1d(t)) for t in tasks]
    seeds = list(seeds)
    env = envs.make(env_name, tasks, streams=len(seeds))
    n, steps = env.num_envs, episodes * env.spec_.horizon
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seeds).generate_state(1)[0]))
    learner = ModelLearner(model, n, steps, env.spec_.n_actions, gen, greedy, backend,
                           context or model.cfg.n_transit, compressor, scorer, kv)
    t0 = time.perf_counter()
    rewards = record(env, learner, steps, seed=seeds[0], progress=progress, desc="evaluate")["rewards"]  # (n, steps)
    seconds = time.perf_counter() - t0
    returns = rewards.reshape(len(tasks), len(seeds), episodes, env.spec_.horizon).sum(-1)
    optimal = np.array([envs.optimal_return(env_name, t) for t in tasks])
    return RolloutResult(returns, tasks, seeds, optimal, seconds, steps, learner.traj, learner.cost(steps))


def evaluate_run(run: Run, model, progress: bool = True) -> RolloutResult:
    """Let ``model`` learn in context on the run's held-out tasks with ``run.cfg.eval``; writes
    ``eval/returns.csv``."""
    e = run.cfg.eval
    res = rollout(model, run.cfg.env.name, run.test_tasks, seeds=range(e.seeds), episodes=e.episodes,
                  greedy=e.greedy, progress=progress)
    res.write_csv(run.returns)
    write_summary(res, run.eval_summary)
    return res


def write_summary(res: RolloutResult, path: str | Path, **about) -> Path:
    """``summary.json``: ``about`` (e.g. the compressor's name), the decision cost and :func:`summary`."""
    path = Path(path)
    write_text(path, json.dumps({**about, **asdict(res.cost), **summary(res)}, indent=1) + "\n")
    return path


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
