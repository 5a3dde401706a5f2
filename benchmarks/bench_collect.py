"""Cost of collecting PPO learning histories: the published way against adkit's batched PPO.

(a) The published (DICP) way: stable-baselines3 PPO on a ``DummyVecEnv`` of 100
    Darkroom streams for ONE goal (n_steps 20, batch 50, 20 epochs, lr 3e-4, the
    rest SB3's defaults; 100,000 timesteps), on one thread; 81 goals cost 81 times
    that, or half of it on 2 cores with one process per core.
(b) adkit's :class:`~adkit.data.sources.ppo.PPOLearner` with ``PPOConfig`` (changed by
    ``--ppo``), every task batched in torch, on the same goal x 100 streams x
    1,000 steps, then on ``--goals`` goals (default all 81) at once.

For each it prints seconds, env steps/s and the mean return of episodes 1, 10,
25 and 50; then the published cost projected to all goals on 2 cores and
adkit's speed-up over it. Prints figures; asserts nothing.

Measured on the quiet 2-core machine (benchmarks/RESULTS.md): SB3 43 s per goal;
adkit, 81 goals, 73 s with n_epochs 5 (the paper profile's), 24x faster than the
published way on 2 cores. The PPO update's cost grows with n_epochs about linearly.
On a busy machine pass ``--threads 1``: torch's two threads then wait on each other.

Usage::

    .venv/bin/python benchmarks/bench_collect.py                  # PPOConfig as configured
    .venv/bin/python benchmarks/bench_collect.py --ppo n_epochs=5 # change PPOConfig fields (adkit only)
    .venv/bin/python benchmarks/bench_collect.py --skip-sb3 --goals 9 --encoding raw  # SB3's raw (row, col) input
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import gymnasium as gym
import numpy as np
import torch

from adkit import envs
from adkit.config import PPOConfig
from adkit.data.loop import record
from adkit.data.sources.ppo import ENCODINGS, PPOLearner
from adkit.envs.grid import MOVES

PUBLISHED = dict(n_steps=20, batch_size=50, n_epochs=20, learning_rate=3e-4)  # DICP's SB3 PPO settings
GOAL = (2, 6)  # the single goal of the per-goal runs (optimal return 17)
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


def run_sb3() -> tuple[float, np.ndarray]:
    """Seconds and episode returns ``(STREAMS, episodes)`` of the published SB3 PPO on GOAL, one thread."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    vec = DummyVecEnv([lambda: Darkroom(GOAL)] * STREAMS)
    model = PPO("MlpPolicy", vec, **PUBLISHED, seed=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(STREAMS * STEPS)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return seconds, np.array([e.returns for e in vec.envs])


def run_adkit(goals: list, cfg: PPOConfig, encoding: str) -> tuple[float, np.ndarray]:
    """Seconds and episode returns ``(goals * STREAMS, episodes)`` of adkit's batched PPO."""
    env = envs.make("darkroom", goals, streams=STREAMS)
    t0 = time.perf_counter()
    learner = PPOLearner(env, cfg, STEPS, seed=0, encoding=encoding)
    rewards = record(env, learner, STEPS, seed=0, progress=False)["rewards"]  # (n_envs, STEPS)
    seconds = time.perf_counter() - t0
    return seconds, rewards.reshape(len(rewards), -1, HORIZON).sum(-1)  # (n_envs, STEPS) -> (n_envs, episodes)


def line(name: str, n_goals: int, seconds: float, returns: np.ndarray, optimal: float) -> None:
    steps = n_goals * STREAMS * STEPS
    print(f"{name:<34} {seconds:7.1f} s  {steps / seconds:9,.0f} env steps/s  {curve(returns)}"
          f"  (optimal {optimal:.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--goals", type=int, default=81, help="goals (row-major order) in adkit's batched run")
    p.add_argument("--skip-sb3", action="store_true", help="skip the stable-baselines3 run")
    p.add_argument("--encoding", choices=ENCODINGS, default="rowcol", help="adkit's network input")
    p.add_argument("--threads", type=int, default=0, help="torch threads for adkit (0: torch's default)")
    p.add_argument("--ppo", nargs="*", default=[], metavar="FIELD=VALUE", help="PPOConfig values for adkit")
    args = p.parse_args()
    changes = dict(kv.split("=", 1) for kv in args.ppo)
    base = PPOConfig()
    if unknown := set(changes) - {f.name for f in dataclasses.fields(base)}:
        p.error(f"unknown PPOConfig fields {sorted(unknown)}")
    cfg = dataclasses.replace(base, **{k: type(getattr(base, k))(v) for k, v in changes.items()})
    if args.threads:
        torch.set_num_threads(args.threads)
    all_goals = envs.task_list("darkroom")
    goals = all_goals[: args.goals]
    opt_one = envs.optimal_return("darkroom", GOAL)
    print(f"published (SB3): {PUBLISHED}\nadkit: {cfg}, encoding {args.encoding}, torch threads "
          f"{torch.get_num_threads()}\n{STREAMS} streams x {STEPS} steps per goal\n")

    if not args.skip_sb3:
        sb3_s, sb3_ret = run_sb3()
        line(f"(a) SB3, goal {GOAL}, 1 thread", 1, sb3_s, sb3_ret, opt_one)
    one_s, one_ret = run_adkit([GOAL], cfg, args.encoding)
    line(f"(b) adkit, goal {GOAL}", 1, one_s, one_ret, opt_one)
    all_s, all_ret = run_adkit(goals, cfg, args.encoding)
    line(f"(b) adkit, {len(goals)} goals batched", len(goals), all_s, all_ret,
         float(np.mean([envs.optimal_return("darkroom", g) for g in goals])))

    if not args.skip_sb3:
        published = len(all_goals) * sb3_s / 2
        batched = all_s * len(all_goals) / len(goals)
        print(f"\npublished way, {len(all_goals)} goals on 2 cores: {len(all_goals)} x {sb3_s:.1f} s / 2 = "
              f"{published / 60:.1f} min; adkit{'' if len(goals) == len(all_goals) else ' (scaled)'}: "
              f"{batched / 60:.1f} min; speed-up x{published / batched:.1f}")


if __name__ == "__main__":
    main()
