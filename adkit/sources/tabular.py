"""Cheap sources with clear learning curves: tabular Q-learning and noise distillation."""

from __future__ import annotations

import numpy as np

from adkit.config import NoiseConfig, QLearningConfig
from adkit.envs import GridVectorEnv
from adkit.sources.base import linear


class QLearner:
    """Tabular Q-learning with epsilon-greedy exploration, one table per sub-env.

    Epsilon is annealed linearly over the stream; ties between equal Q-values are
    broken at random, so an all-zero table explores instead of repeating action 0.
    The last step of an episode is treated as terminal (no bootstrap), as in the
    published data, since the position alone does not tell the time left.
    """

    def __init__(self, env: GridVectorEnv, cfg: QLearningConfig, steps: int, seed: int = 0):
        size, n_act = env.spec_.size, env.spec_.n_actions
        self.cfg, self.steps, self.size = cfg, steps, size
        self.q = np.full((env.num_envs, size * size, n_act), cfg.optimistic_init, np.float64)  # (n, cells, A)
        self.rng = np.random.default_rng(seed)
        self.rows = np.arange(env.num_envs)

    def _cell(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, 0].astype(np.int64) * self.size + obs[:, 1]

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        q = self.q[self.rows, self._cell(obs)]  # (n, A)
        noise = self.rng.random(q.shape) * 1e-6  # random tie-breaking
        greedy = np.argmax(q + noise, axis=1)
        eps = linear(self.cfg.eps_start, self.cfg.eps_end, t / max(1, self.steps - 1))
        explore = self.rng.random(len(q)) < eps
        return np.where(explore, self.rng.integers(0, q.shape[1], len(q)), greedy)

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t) -> None:
        s, s2 = self._cell(obs), self._cell(next_obs)
        target = rewards + self.cfg.gamma * self.q[self.rows, s2].max(1) * ~dones
        q_sa = self.q[self.rows, s, actions]
        self.q[self.rows, s, actions] = q_sa + self.cfg.lr * (target - q_sa)


class NoiseLearner:
    """Noise distillation (AD-epsilon): the optimal policy with annealed uniform noise.

    In episode ``k`` of ``K`` an action is uniform-random with probability
    ``eps_k``, annealed linearly from ``eps_start`` to ``eps_end`` over the first
    ``anneal_fraction`` of the episodes, and optimal otherwise. No RL needed.
    """

    def __init__(self, env: GridVectorEnv, cfg: NoiseConfig, steps: int, seed: int = 0):
        self.env, self.cfg = env, cfg
        self.n_episodes = max(1, steps // env.spec_.horizon)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        episode = t // self.env.spec_.horizon
        span = max(1.0, self.cfg.anneal_fraction * self.n_episodes - 1)
        eps = linear(self.cfg.eps_start, self.cfg.eps_end, episode / span)
        n = self.env.num_envs
        explore = self.rng.random(n) < eps
        return np.where(explore, self.rng.integers(0, self.env.spec_.n_actions, n), self.env.core.optimal_actions())

    def observe(self, *args, **kwargs) -> None:
        """Noise distillation does not learn."""
