"""Dark gridworld task families, batched behind the gymnasium vector-env API.

>>> from adkit import envs
>>> train, test = envs.task_split("darkroom")
>>> env = envs.make("darkroom", test, streams=4)      # 8 tasks x 4 streams = 32 sub-envs
>>> obs, info = env.reset(seed=0)                     # obs: (32, 2) positions
"""

from adkit.envs.grid import SPECS, GridCore, GridSpec, optimal_return, random_return, spec, task_list, task_split
from adkit.envs.vector import GridVectorEnv

NAMES = tuple(SPECS)


def random_return_mean(name: str, tasks) -> float:
    """Mean return of the uniform-random policy over ``tasks`` (exact)."""
    return sum(random_return(name, t) for t in tasks) / len(tasks)


def make(name: str, tasks, streams: int = 1) -> GridVectorEnv:
    """A vector env with one sub-env per task x stream (task-major order)."""
    return GridVectorEnv(name, tasks, streams)


__all__ = ["NAMES", "GridCore", "GridSpec", "GridVectorEnv", "make", "optimal_return", "random_return",
           "random_return_mean", "spec", "task_list", "task_split"]
