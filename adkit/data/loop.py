"""The one environment loop: source algorithms and the model's in-context evaluation both run in it."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from adkit import threads
from adkit.envs import GridVectorEnv
from adkit.progress import bar


class Learner(Protocol):
    """A source algorithm driving all sub-envs of one vector env at once.

    ``act`` picks an action for every sub-env; ``observe`` receives the batch of
    transitions that followed (``next_obs`` is the true next position, also at an
    episode's end; ``reset_obs`` is where each sub-env continues from).
    """

    def act(self, obs: np.ndarray, t: int) -> np.ndarray: ...

    def observe(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
                dones: np.ndarray, reset_obs: np.ndarray, t: int) -> None: ...


def record(env: GridVectorEnv, learner: Learner, steps: int, seed: int = 0, progress: bool = True,
           desc: str = "collect") -> dict[str, np.ndarray]:
    """Run ``learner`` for ``steps`` steps on every sub-env and record what it did.

    Returns arrays with a leading ``(num_envs, steps)``: states, actions, rewards,
    next_states (true last position at episode ends) and dones.
    """
    n = env.num_envs
    out = {
        "states": np.zeros((n, steps, 2), np.int8),
        "actions": np.zeros((n, steps), np.int8),
        "rewards": np.zeros((n, steps), np.float32),
        "next_states": np.zeros((n, steps, 2), np.int8),
        "dones": np.zeros((n, steps), np.bool_),
    }
    obs, _ = env.reset(seed=seed)
    for t in bar(range(steps), desc=desc, disable=not progress, mininterval=1.0):
        threads.rebalance()
        actions = learner.act(obs, t)
        reset_obs, rewards, terminated, truncated, info = env.step(actions)
        dones = terminated | truncated
        next_obs = np.where(info["_final_obs"][:, None], info["final_obs"], reset_obs) if "final_obs" in info \
            else reset_obs
        learner.observe(obs, actions, rewards, next_obs, dones, reset_obs, t)
        out["states"][:, t], out["actions"][:, t], out["rewards"][:, t] = obs, actions, rewards
        out["next_states"][:, t], out["dones"][:, t] = next_obs, dones
        obs = reset_obs
    return out
