"""Cheap sources with clear learning curves: tabular Q-learning, noise distillation, posterior sampling."""

from __future__ import annotations

import numpy as np

from adkit.config import NoiseConfig, PSRLConfig, QLearningConfig
from adkit.data.sources.base import linear
from adkit.envs import GridVectorEnv


class QLearner:
    """Tabular Q-learning with epsilon-greedy exploration, one table per sub-env.

    Epsilon is annealed linearly over the stream; ties between equal Q-values are
    broken at random, so an all-zero table explores instead of repeating action 0.
    The last step of an episode is treated as terminal (no bootstrap), as in the
    published data, since the position alone does not tell the time left.

    With ``planning_sweeps > 0`` it is Dyna-Q with optimism (R-max style): it
    remembers the outcome of every (state, action) it tried and, at each episode
    end, runs value-iteration sweeps over that model, unvisited pairs keeping the
    optimistic value. It then explores untried actions systematically and, once
    a reward is found, heads for it on the shortest path within an episode or two.
    (The model is of positions only, so for key-to-door it is an approximation.)
    """

    def __init__(self, env: GridVectorEnv, cfg: QLearningConfig, steps: int, seed: int = 0):
        size, n_act = env.spec_.size, env.spec_.n_actions
        self.cfg, self.steps, self.size = cfg, steps, size
        shape = (env.num_envs, size * size, n_act)  # (n, cells, A)
        self.q = np.full(shape, cfg.optimistic_init, np.float64)
        self.rng = np.random.default_rng(seed)
        self.rows = np.arange(env.num_envs)
        if cfg.planning_sweeps:
            self.model_next = np.zeros(shape, np.int64)  # next cell of each tried (state, action)
            self.model_reward = np.zeros(shape, np.float64)
            self.tried = np.zeros(shape, bool)

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
        if self.cfg.planning_sweeps:
            self.model_next[self.rows, s, actions] = s2
            self.model_reward[self.rows, s, actions] = rewards
            self.tried[self.rows, s, actions] = True
            if dones.all():  # fixed horizon: every stream ends its episode together
                self._plan()

    def _plan(self) -> None:
        """Value iteration on the learned model; untried pairs stay optimistic."""
        for _ in range(self.cfg.planning_sweeps):
            v = self.q.max(-1)  # (n, cells)
            backup = self.model_reward + self.cfg.gamma * np.take_along_axis(
                v, self.model_next.reshape(len(v), -1), axis=1).reshape(self.q.shape)  # (n, cells, A)
            self.q = np.where(self.tried, backup, self.cfg.optimistic_init)


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


class PosteriorSampler:
    """Posterior sampling for goal-finding tasks, with a memory of ``memory`` episodes.

    The goal is one unknown cell. Each episode the learner samples a target from
    the cells it has not visited in its memory (the posterior, uniform) and walks
    there; a target visited without reward is resampled; once a reward has been
    seen in memory it heads for that cell and stays. Actions are uniform-random
    with probability ``eps``.

    Its behaviour depends only on the last ``memory`` episodes, so a model whose
    context spans them can imitate it exactly: sources whose state reaches
    further back than the context (e.g. a Q-table) cannot be distilled as well.
    Darkroom and Darkroom-Hard only.
    """

    def __init__(self, env: GridVectorEnv, cfg: PSRLConfig, steps: int, seed: int = 0):
        s = env.spec_
        if s.task_dim != 2 or s.reward not in ("every", "once"):
            raise ValueError(f"the psrl source needs a single-goal task family, not {s.name!r}")
        self.env, self.cfg, self.size = env, cfg, s.size
        n, cells = env.num_envs, s.size * s.size
        self.visited = np.zeros((n, cfg.memory, cells), bool)  # (n, memory, cells) per remembered episode
        self.rewarded = np.zeros((n, cfg.memory, cells), bool)
        self.rows = np.arange(n)
        self.rng = np.random.default_rng(seed)
        self.target = np.zeros(n, np.int64)
        self.slot = 0  # memory slot of the current episode
        self._resample(np.ones(n, bool))

    def _resample(self, mask: np.ndarray) -> None:
        """New targets for ``mask``: a remembered rewarded cell, else an unvisited one at random."""
        free = ~self.visited.any(1)  # (n, cells)
        free[~free.any(1)] = True  # everything visited: any cell
        u = self.rng.random(free.shape) * free  # uniform choice among free cells
        pick = u.argmax(1)
        seen = self.rewarded.any(1)  # (n, cells)
        self.target = np.where(mask, np.where(seen.any(1), seen.argmax(1), pick), self.target)

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        d = np.stack(divmod(self.target, self.size), 1) - obs  # (n, 2) to target
        useful = np.stack([d[:, 0] > 0, d[:, 0] < 0, d[:, 1] > 0, d[:, 1] < 0, (d == 0).all(1)], 1)  # (n, 5)
        choice = (self.rng.random(useful.shape) * useful).argmax(1)  # a random useful move
        explore = self.rng.random(len(obs)) < self.cfg.eps
        return np.where(explore, self.rng.integers(0, 5, len(obs)), choice)

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t) -> None:
        cell = next_obs[:, 0].astype(np.int64) * self.size + next_obs[:, 1]
        self.visited[self.rows, self.slot, cell] = True
        self.rewarded[self.rows, self.slot, cell] |= rewards > 0
        if dones.all():  # fixed horizon: every stream starts a new episode
            self.slot = (self.slot + 1) % self.cfg.memory
            self.visited[:, self.slot] = False
            self.rewarded[:, self.slot] = False
            self._resample(np.ones(len(obs), bool))
        else:
            self._resample((cell == self.target) & (rewards <= 0))
