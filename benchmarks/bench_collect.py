"""Cost of collecting PPO learning histories: the published way against adkit's batched PPO.

(a) The published (DICP) way: stable-baselines3 PPO on a ``DummyVecEnv`` of 100
    Darkroom streams for one goal (n_steps 20, batch 50, 20 epochs, lr 3e-4, the
    rest SB3's defaults; 100,000 timesteps), one process per goal and core, one
    thread each: ``--sb3-goals`` goals (default 4) on ``--cores`` processes at a
    time. 81 goals cost 81 / 4 times that wall-clock.
(b) adkit's :class:`~adkit.data.sources.ppo.PPOLearner` with ``PPOConfig`` (changed by
    ``--ppo``; default: the published settings), every task batched in torch, on
    ``--goals`` goals (default all 81) x 100 streams x 1,000 steps at once.

For each it prints seconds, env steps/s and the mean return of episodes 1, 10,
25 and 50; then the published cost projected to all goals and adkit's speed-up
over it, both from this one run. Prints figures; asserts nothing. Figures:
benchmarks/RESULTS.md.

Usage::

    .venv/bin/python benchmarks/bench_collect.py                  # PPOConfig as configured
    .venv/bin/python benchmarks/bench_collect.py --ppo n_epochs=5 # change PPOConfig fields (adkit only)
    .venv/bin/python benchmarks/bench_collect.py --sb3-goals 0 --goals 9 --ppo encoding=rowcol  # one-hot input
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import gymnasium as gym
import numpy as np
import torch

from adkit import envs
from adkit.config import PPOConfig, from_dict
from adkit.data.collect import record_all
from adkit.envs.grid import MOVES

PUBLISHED = dict(n_steps=20, batch_size=50, n_epochs=20, learning_rate=3e-4)  # DICP's SB3 PPO settings
SB3_GOALS = [(2, 6), (7, 1), (0, 0), (5, 4), (8, 8), (1, 3)]  # the goals run the published way
STREAMS, STEPS, HORIZON, SIZE = 100, 1000, 20, 9
CURVE = (1, 10, 25, 50)  # episodes whose mean return is printed


class Darkroom(gym.Env):
    """One Darkroom stream as the published code has it, for stable-baselines3.

    Same dynamics as ``adkit.envs`` (9x9, centre start, reward 1 per step on the
    goal). The episode ends with ``terminated=True`` at the horizon: the published
    env reports a plain ``done``, so SB3 does not bootstrap it as a time-out.
    """

    observation_space = gym.spaces.Box(0, SIZE - 1, shape=(2,), dtype=np.int64)
    action_space = gym.spaces.Discrete(5)

    def __init__(self, goal):
        self.goal, self.returns = np.array(goal), []  # returns: one per finished episode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t, self.ret = np.array([SIZE // 2, SIZE // 2]), 0, 0.0
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + MOVES[int(action)], 0, SIZE - 1)
        reward = float((self.pos == self.goal).all())
        self.t, self.ret = self.t + 1, self.ret + reward
        done = self.t >= HORIZON
        if done:
            self.returns.append(self.ret)
        return self.pos.copy(), reward, done, False, {}


def curve(returns: np.ndarray) -> str:
    """``returns (n_streams, n_episodes)`` -> 'ep1 .. ep10 .. ep25 .. ep50 ..' of the stream mean."""
    mean = returns.mean(0)
    return "  ".join(f"ep{k} {mean[k - 1]:5.2f}" for k in CURVE if k <= len(mean))


def run_sb3(goal: tuple[int, int]) -> tuple[float, np.ndarray]:
    """Seconds and episode returns ``(STREAMS, episodes)`` of the published SB3 PPO on one goal, one thread
    (run in its own process, as the published way runs one process per goal and core)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    vec = DummyVecEnv([lambda: Darkroom(goal)] * STREAMS)
    model = PPO("MlpPolicy", vec, **PUBLISHED, seed=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(STREAMS * STEPS)
    return time.perf_counter() - t0, np.array([e.returns for e in vec.envs])


def run_sb3_pool(goals: list, cores: int) -> tuple[float, list[float], np.ndarray]:
    """The published way on ``goals``: one process per goal, ``cores`` at a time. Returns the wall
    seconds, each goal's seconds and the episode returns ``(len(goals) * STREAMS, episodes)``."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(run_sb3, goals))
    return time.perf_counter() - t0, [s for s, _ in runs], np.concatenate([r for _, r in runs])


def run_adkit(goals: list, cfg: PPOConfig, workers: int) -> tuple[float, np.ndarray]:
    """Seconds and episode returns ``(goals * STREAMS, episodes)`` of adkit's batched PPO, as ``adkit
    collect`` runs it: in ``workers`` processes of one thread each (``collect.workers``), or in this one."""
    run_cfg = from_dict({"env": {"name": "darkroom"}, "collect": {"source": "ppo", "streams": STREAMS, "steps": STEPS,
                                                                  "workers": workers}})
    run_cfg.collect.ppo = cfg
    t0 = time.perf_counter()
    rewards = record_all(run_cfg, np.array(goals, dtype=np.int64), progress=False)["rewards"]  # (n_envs, STEPS)
    seconds = time.perf_counter() - t0
    return seconds, rewards.reshape(len(rewards), -1, HORIZON).sum(-1)  # (n_envs, STEPS) -> (n_envs, episodes)


def line(name: str, n_goals: int, seconds: float, returns: np.ndarray, optimal: float) -> None:
    steps = n_goals * STREAMS * STEPS
    print(f"{name:<34} {seconds:7.1f} s  {steps / seconds:9,.0f} env steps/s  {curve(returns)}"
          f"  (optimal {optimal:.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--goals", type=int, default=81, help="goals (row-major order) in adkit's batched run")
    p.add_argument("--sb3-goals", type=int, default=4, help="goals run the published way (0: skip SB3)")
    p.add_argument("--cores", type=int, default=2, help="processes at a time for the published way")
    p.add_argument("--one-goal", action="store_true", help="also run adkit on SB3's first goal alone")
    p.add_argument("--threads", type=int, default=0, help="torch threads for adkit (0: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="adkit processes (collect.workers; 1: this one)")
    p.add_argument("--ppo", nargs="*", default=[], metavar="FIELD=VALUE", help="PPOConfig values for adkit")
    args = p.parse_args()
    changes = dict(kv.split("=", 1) for kv in args.ppo)
    base = PPOConfig(encoding="raw")  # SB3's input: the (row, col) floats
    if unknown := set(changes) - {f.name for f in dataclasses.fields(base)}:
        p.error(f"unknown PPOConfig fields {sorted(unknown)}")
    cfg = dataclasses.replace(base, **{k: type(getattr(base, k))(v) for k, v in changes.items()})
    if args.threads:
        torch.set_num_threads(args.threads)
    all_goals = envs.task_list("darkroom")
    goals = all_goals[: args.goals]
    sb3_goals = SB3_GOALS[: args.sb3_goals]
    how = f"{args.workers} processes of 1 torch thread" if args.workers > 1 else f"{torch.get_num_threads()} threads"
    print(f"published (SB3): {PUBLISHED}\nadkit: {cfg}, {how}\n"
          f"{STREAMS} streams x {STEPS} steps per goal\n")

    def optimal(gs):
        return float(np.mean([envs.optimal_return("darkroom", g) for g in gs]))

    if sb3_goals:
        wall, each, sb3_ret = run_sb3_pool(sb3_goals, args.cores)
        for g, sec, ret in zip(sb3_goals, each, np.split(sb3_ret, len(sb3_goals))):
            line(f"(a) SB3, goal {g}, 1 thread", 1, sec, ret, optimal([g]))
        line(f"(a) SB3, {len(sb3_goals)} goals, {args.cores} processes", len(sb3_goals), wall, sb3_ret,
             optimal(sb3_goals))
    if args.one_goal:
        one_s, one_ret = run_adkit(SB3_GOALS[:1], cfg, 1)
        line(f"(b) adkit, goal {SB3_GOALS[0]}", 1, one_s, one_ret, optimal(SB3_GOALS[:1]))
    all_s, all_ret = run_adkit(goals, cfg, args.workers)
    line(f"(b) adkit, {len(goals)} goals batched, {args.workers} process(es)", len(goals), all_s, all_ret,
         optimal(goals))

    if sb3_goals:
        published = wall * len(all_goals) / len(sb3_goals)  # the same goals-per-second on all goals
        batched = all_s * len(all_goals) / len(goals)
        print(f"\npublished way, {len(all_goals)} goals on {args.cores} cores: {wall:.1f} s x {len(all_goals)} / "
              f"{len(sb3_goals)} = {published / 60:.1f} min; adkit{'' if len(goals) == len(all_goals) else ' (scaled)'}"
              f": {batched / 60:.1f} min; speed-up x{published / batched:.1f}")


if __name__ == "__main__":
    main()
