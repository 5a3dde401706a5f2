"""Batched dark gridworlds: every (task, stream) sub-environment advances in one numpy step.

The four task families of the Algorithm Distillation literature share one core:
an agent on a ``size x size`` grid that sees only its own (row, col) position,
5 actions (0: +row, 1: -row, 2: +col, 3: -col, 4: stay; moves are clipped at the
walls), and a fixed horizon after which the episode is truncated. The families
differ in start cell, reward rule and what a task is:

=================  ====  =======  ==========  =================================  ====================
name               size  horizon  start       reward                             task
=================  ====  =======  ==========  =================================  ====================
darkroom           9     20       centre      1 on every step spent on the goal  goal (row, col)
darkroom-hard      17    20       centre      1 the first time the goal is hit   goal (row, col)
darkroom-permuted  9     50       (0, 0)      1 on every step spent on (8, 8)    permutation index
key-to-door        9     50       centre      1 for the key, then 1 for the      (key_r, key_c,
                                              door (each once, door after key)    door_r, door_c)
=================  ====  =======  ==========  =================================  ====================

Rewards are given on arrival (and on staying) after the move, as in the published
environments. There is no early termination: every episode lasts ``horizon`` steps,
so learning histories of all streams stay aligned episode by episode.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

MOVES = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], dtype=np.int64)  # (5, 2) row/col deltas
PERMUTATIONS = np.array(list(itertools.permutations(range(5))), dtype=np.int64)  # (120, 5)


@dataclass(frozen=True)
class GridSpec:
    """Static description of one task family."""

    name: str
    size: int  # grid side length
    horizon: int  # steps per episode (truncation, never termination)
    start: tuple[int, int] | None  # start cell; None means the centre
    reward: str  # "every": 1 per step on goal; "once": 1 on first arrival; "key-door"
    task_dim: int  # ints per task: 2 (goal), 1 (permutation) or 4 (key, door)
    n_actions: int = 5

    @property
    def start_cell(self) -> tuple[int, int]:
        centre = self.size // 2
        return self.start if self.start is not None else (centre, centre)


SPECS: dict[str, GridSpec] = {
    "darkroom": GridSpec("darkroom", size=9, horizon=20, start=None, reward="every", task_dim=2),
    "darkroom-hard": GridSpec("darkroom-hard", size=17, horizon=20, start=None, reward="once", task_dim=2),
    "darkroom-permuted": GridSpec("darkroom-permuted", size=9, horizon=50, start=(0, 0), reward="every", task_dim=1),
    "key-to-door": GridSpec("key-to-door", size=9, horizon=50, start=None, reward="key-door", task_dim=4),
}


def spec(name: str) -> GridSpec:
    """Look up a family by name (case, '_' and '-' are ignored: ``Dark_Key_To_Door`` works)."""
    key = name.lower().replace("_", "-").replace("dark-key", "key")
    aliases = {"darkroompermuted": "darkroom-permuted", "darkroomhard": "darkroom-hard",
               "darkkeytodoor": "key-to-door", "keytodoor": "key-to-door"}
    key = aliases.get(key.replace("-", ""), key)
    if key not in SPECS:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(SPECS)}")
    return SPECS[key]


def task_list(name: str) -> list[tuple[int, ...]]:
    """All tasks of a family in the published (row-major) order."""
    s = spec(name)
    if s.task_dim == 1:
        return [(p,) for p in range(len(PERMUTATIONS))]
    cells = [(r, c) for r in range(s.size) for c in range(s.size)]
    if s.task_dim == 2:
        return cells
    return [k + d for k in cells for d in cells]


def task_split(name: str, split_seed: int = 0, train_ratio: float = 0.9) -> tuple[list, list]:
    """Train/test tasks as the published AD/DICP code splits them.

    The row-major task list is shuffled with ``random.seed(split_seed)`` and the
    first ``round(n * train_ratio)`` tasks are train, the rest test.
    """
    if not 0.0 <= train_ratio <= 1.0:
        raise ValueError(f"train_ratio must be in [0, 1], got {train_ratio}")
    tasks = task_list(name)
    rng = random.Random(split_seed)  # same stream as random.seed(split_seed); random.shuffle
    rng.shuffle(tasks)
    n_train = round(len(tasks) * train_ratio)
    return tasks[:n_train], tasks[n_train:]


def as_task_array(name: str, tasks) -> np.ndarray:
    """Tasks (ints, tuples or an array) as an ``(n_tasks, task_dim)`` int64 array, validated."""
    s = spec(name)
    arr = np.asarray(tasks, dtype=np.int64)
    if arr.ndim == 1 and s.task_dim == 1:
        arr = arr[:, None]
    if arr.ndim == 1 and arr.shape[0] == s.task_dim:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != s.task_dim:
        raise ValueError(f"{s.name} tasks need {s.task_dim} ints each, got an array of shape {arr.shape}")
    high = len(PERMUTATIONS) if s.task_dim == 1 else s.size
    if arr.size and (arr.min() < 0 or arr.max() >= high):
        raise ValueError(f"{s.name} task values must lie in [0, {high}), got {arr.min()}..{arr.max()}")
    return arr


def _manhattan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).sum(-1)


def optimal_return(name: str, task) -> float:
    """Best achievable episode return for one task (exact, from the dynamics)."""
    s = spec(name)
    t = as_task_array(name, [task])[0]
    start = np.array(s.start_cell)
    if s.reward == "key-door":  # a reward needs one step on the cell, even if already there
        to_key = max(1, int(_manhattan(start, t[:2])))
        to_door = max(1, int(_manhattan(t[:2], t[2:])))
        return float(to_key <= s.horizon) + float(to_key + to_door <= s.horizon)
    goal = np.array([s.size - 1, s.size - 1]) if s.task_dim == 1 else t
    d = int(_manhattan(start, goal))
    if s.reward == "once":
        return float(max(d, 1) <= s.horizon)
    return float(min(s.horizon, max(0, s.horizon + 1 - d)))


class GridCore:
    """The numpy state of ``n`` sub-environments (one task each) and their batched step.

    Holds positions ``(n, 2)``, the step counter ``(n,)`` and the reward latches
    (goal already hit, key held, door opened). ``step`` never resets: the caller
    (the vector env) decides what happens at the horizon.
    """

    def __init__(self, name: str, tasks: np.ndarray):
        self.spec = spec(name)
        self.tasks = as_task_array(name, tasks)  # (n, task_dim)
        n, s = len(self.tasks), self.spec
        if s.task_dim == 1:
            self.action_map = PERMUTATIONS[self.tasks[:, 0]]  # (n, 5): agent action -> move
            self.goal = np.full((n, 2), s.size - 1, dtype=np.int64)
        else:
            self.action_map = np.broadcast_to(np.arange(5), (n, 5))
            self.goal = self.tasks[:, -2:]  # goal, or door for key-to-door
        self.key = self.tasks[:, :2] if s.reward == "key-door" else None
        self.pos = np.zeros((n, 2), dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.got_goal = np.zeros(n, dtype=bool)
        self.got_key = np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return len(self.tasks)

    def reset(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Reset all sub-envs (or those where ``mask`` is True); returns positions ``(n, 2)``."""
        m = np.ones(len(self), dtype=bool) if mask is None else mask
        self.pos[m] = self.spec.start_cell
        self.t[m] = 0
        self.got_goal[m] = False
        self.got_key[m] = False
        return self.pos.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every sub-env by one action; returns ``(next_pos, reward, truncated)``."""
        actions = np.asarray(actions, dtype=np.int64).reshape(-1)
        if actions.shape[0] != len(self):
            raise ValueError(f"expected {len(self)} actions, got {actions.shape[0]}")
        if actions.size and (actions.min() < 0 or actions.max() >= self.spec.n_actions):
            raise ValueError(f"actions must lie in [0, {self.spec.n_actions}), got {actions.min()}..{actions.max()}")
        move = self.action_map[np.arange(len(self)), actions]  # (n,)
        self.pos = np.clip(self.pos + MOVES[move], 0, self.spec.size - 1)
        on_goal = (self.pos == self.goal).all(-1)
        kind = self.spec.reward
        if kind == "every":
            reward = on_goal.astype(np.float32)
        elif kind == "once":
            reward = (on_goal & ~self.got_goal).astype(np.float32)
            self.got_goal |= on_goal
        else:  # key-door: the key once, then the door once
            on_key = (self.pos == self.key).all(-1)
            key_now = on_key & ~self.got_key
            door_now = on_goal & self.got_key & ~self.got_goal & ~key_now
            self.got_key |= key_now
            self.got_goal |= door_now
            reward = (key_now | door_now).astype(np.float32)
        self.t += 1
        return self.pos.copy(), reward, self.t >= self.spec.horizon

    def optimal_actions(self) -> np.ndarray:
        """A shortest-path action for every sub-env from its current state ``(n,)``.

        Moves along rows first, then columns, then stays (the published rule);
        for key-to-door it heads for the key until it is held, then the door.
        """
        target = self.goal
        if self.key is not None:
            target = np.where(self.got_key[:, None], self.goal, self.key)
        d = target - self.pos  # (n, 2)
        move = np.select([d[:, 0] > 0, d[:, 0] < 0, d[:, 1] > 0, d[:, 1] < 0], [0, 1, 2, 3], default=4)
        # invert the permutation: the agent action whose mapped move is `move`
        return np.argmax(self.action_map == move[:, None], axis=1)


def random_return(name: str, task) -> float:
    """Expected episode return of the uniform-random policy (exact, by dynamic programming).

    Propagates the distribution over (cell, reward latches) for ``horizon`` steps;
    every action has probability 1/5.
    """
    s = spec(name)
    core = GridCore(name, as_task_array(name, [task]))
    cells = np.array([(r, c) for r in range(s.size) for c in range(s.size)])  # (C, 2)
    n_cells = len(cells)
    # next cell of every (cell, action): (C, A)
    nxt = np.clip(cells[:, None, :] + MOVES[core.action_map[0]][None], 0, s.size - 1)
    nxt = nxt[..., 0] * s.size + nxt[..., 1]
    goal = core.goal[0, 0] * s.size + core.goal[0, 1]
    key = core.key[0, 0] * s.size + core.key[0, 1] if core.key is not None else -1
    prob = np.zeros((n_cells, 2, 2))  # (cell, latch_a, latch_b): goal/key latches
    start = s.start_cell[0] * s.size + s.start_cell[1]
    prob[start, 0, 0] = 1.0
    expected = 0.0
    for _ in range(s.horizon):
        new = np.zeros_like(prob)
        for a in range(s.n_actions):
            for la in (0, 1):
                for lb in (0, 1):
                    p = prob[:, la, lb] / s.n_actions  # (C,)
                    dest = nxt[:, a]
                    if s.reward == "every":
                        r, la2, lb2 = (dest == goal).astype(float), np.full_like(dest, la), np.full_like(dest, lb)
                    elif s.reward == "once":
                        hit = dest == goal
                        r, la2, lb2 = (hit & (la == 0)).astype(float), np.where(hit, 1, la), np.full_like(dest, lb)
                    else:  # la: key held, lb: door opened
                        key_now = (dest == key) & (la == 0)
                        door_now = (dest == goal) & (la == 1) & (lb == 0)
                        r = (key_now | door_now).astype(float)
                        la2, lb2 = np.where(key_now, 1, la), np.where(door_now, 1, lb)
                    expected += float((p * r).sum())
                    np.add.at(new, (dest, la2, lb2), p)
        prob = new
    return expected
