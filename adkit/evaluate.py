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
  :mod:`adkit.context`) and the kept ones re-encoded, O(budget^2) per step plus,
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
import torch
from tqdm.auto import tqdm

from adkit import envs
from adkit.context import compressed_logits
from adkit.io import atomic_path

CSV_FIELDS = ["task", "seed", "episode", "return", "optimal"]


@dataclass
class RolloutResult:
    returns: np.ndarray  # (n_tasks, n_seeds, n_episodes) episode returns
    tasks: list  # task tuples, in row order
    seeds: list  # evaluation seeds, in column order
    optimal: np.ndarray  # (n_tasks,) optimal return of each task
    seconds: float  # wall-clock of the rollout
    steps: int  # environment steps per stream
    history: History | None = None  # every transition of every stream (contexts at any decision)

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


class History:
    """Every transition of every stream so far, as tensors, for windowed re-encoding."""

    def __init__(self, n: int, steps: int):
        self.states = torch.zeros(n, steps + 1, 2, dtype=torch.long)  # s_0..s_T (the last is the query)
        self.actions = torch.zeros(n, steps, dtype=torch.long)
        self.rewards = torch.zeros(n, steps)
        self.next_states = torch.zeros(n, steps, 2, dtype=torch.long)

    def window(self, t: int, size: int) -> dict[str, torch.Tensor]:
        """Model inputs for the last ``size`` transitions before decision ``t`` (tokens (B, L, ·))."""
        lo = max(0, t - size)
        return {"states": self.states[:, lo:t], "actions": self.actions[:, lo:t], "rewards": self.rewards[:, lo:t],
                "next_states": self.next_states[:, lo:t], "queries": self.states[:, lo + 1:t + 1],
                "positions": torch.arange(lo, t).expand(self.actions.shape[0], t - lo)}


def check_model_for(model, env_name: str, context: int | None = None) -> None:
    """Fail with a message (not a shape error) if ``model`` cannot run ``env_name`` at ``context``."""
    want, have = envs.spec(env_name).name, envs.spec(model.cfg.env).name
    if want != have:
        raise ValueError(f"this checkpoint was trained on {have!r}; it cannot be evaluated on {want!r}")
    if context is not None and context > model.cfg.n_transit:
        raise ValueError(f"context {context} is longer than the {model.cfg.n_transit} transitions the model "
                         f"attends to (n_transit); retrain with a larger n_transit")


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
    hist, cache = History(n, steps), model.new_cache(n)
    size = context or model.cfg.n_transit
    rewards = np.zeros((n, steps), dtype=np.float32)
    obs, _ = env.reset(seed=seeds[0])
    t0 = time.perf_counter()
    for t in tqdm(range(steps), desc="evaluate", disable=not progress, mininterval=1.0):
        hist.states[:, t] = torch.from_numpy(obs)
        if t == 0:
            actions = torch.randint(0, env.spec_.n_actions, (n,), generator=gen)
        else:
            if compressor is not None:
                logits, _ = compressed_logits(model, hist.window(t, size), compressor, gen, scorer)  # (n, A)
            elif backend == "cache":
                logits = model.step(cache, hist.states[:, t - 1], hist.actions[:, t - 1], hist.rewards[:, t - 1],
                                    hist.next_states[:, t - 1], hist.states[:, t])  # (n, A)
            else:
                logits = model(**hist.window(t, size))[:, -1]  # (n, A)
            actions = logits.argmax(-1) if greedy else torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        obs, r, _, _, info = env.step(actions.numpy())
        nxt = np.where(info["_final_obs"][:, None], info["final_obs"], obs) if "final_obs" in info else obs
        hist.actions[:, t], hist.rewards[:, t] = actions, torch.from_numpy(r)
        hist.next_states[:, t] = torch.from_numpy(nxt)
        rewards[:, t] = r
    seconds = time.perf_counter() - t0
    returns = rewards.reshape(len(tasks), len(seeds), episodes, env.spec_.horizon).sum(-1)
    optimal = np.array([envs.optimal_return(env_name, t) for t in tasks])
    return RolloutResult(returns, tasks, seeds, optimal, seconds, steps, hist)


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
