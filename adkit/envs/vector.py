"""The gymnasium vector-env face of :class:`~adkit.envs.grid.GridCore`."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from adkit.envs.grid import GridCore, as_task_array, spec


class GridVectorEnv(VectorEnv):
    """One sub-env per (task, stream), stepped together in numpy.

    Sub-env ``i`` runs task ``i // streams``. Episodes are truncated at the
    horizon and reset in the same step (gymnasium's ``SAME_STEP`` autoreset):
    the returned observation is then the start cell and ``info["final_obs"]``
    holds the true last position, with ``info["_final_obs"]`` marking which
    sub-envs ended. Learning histories record that true last position as the
    next state of an episode's last transition. (stable-baselines3's
    ``DummyVecEnv`` hands back the reset state there, which the published
    datasets store; adkit does not.)
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, name: str, tasks, streams: int = 1):
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.spec_ = spec(name)
        task_arr = as_task_array(name, tasks)  # (n_tasks, task_dim)
        self.streams = streams
        self.core = GridCore(name, np.repeat(task_arr, streams, axis=0))
        self.num_envs = len(self.core)
        s = self.spec_
        self.single_observation_space = spaces.Box(0, s.size - 1, shape=(2,), dtype=np.int64)
        self.single_action_space = spaces.Discrete(s.n_actions)
        self.observation_space = spaces.Box(0, s.size - 1, shape=(self.num_envs, 2), dtype=np.int64)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_envs, s.n_actions))

    @property
    def tasks(self) -> np.ndarray:
        """Task of every sub-env ``(num_envs, task_dim)``."""
        return self.core.tasks

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset every sub-env to the start cell. The dynamics are deterministic;
        ``seed`` only seeds ``self.np_random`` (and the action space) for callers."""
        if seed is not None:
            self._np_random, self._np_random_seed = np.random.default_rng(seed), seed
            self.action_space.seed(seed)
        return self.core.reset(), {}

    def step(self, actions):
        obs, reward, truncated = self.core.step(actions)
        terminated = np.zeros(self.num_envs, dtype=bool)
        info: dict = {}
        if truncated.any():
            info["final_obs"] = obs.copy()
            info["_final_obs"] = truncated.copy()
            obs = np.where(truncated[:, None], self.core.reset(truncated), obs)
        return obs, reward, terminated, truncated, info
