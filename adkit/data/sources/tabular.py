"""Cheap sources with clear learning curves: tabular Q-learning, noise distillation, posterior sampling."""

from __future__ import annotations

import numpy as np

from adkit.config import NoiseConfig, PSRLConfig, QLearningConfig
from adkit.data.sources.base import linear
from adkit.envs import GridVectorEnv
from adkit.envs.grid import MOVES, PERMUTATIONS


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


class Memory:
    """Boolean facts about the last ``episodes`` episodes of ``n`` streams, one array per name.

    ``facts[name]`` is ``(n, episodes, size)``; slot ``slot`` is the current episode. ``seen``
    ORs a fact over every remembered episode; ``next_episode`` forgets the oldest.
    """

    def __init__(self, n: int, episodes: int, size: int, names: tuple[str, ...]):
        self.facts = {name: np.zeros((n, episodes, size), bool) for name in names}
        self.rows, self.slot, self.episodes = np.arange(n), 0, episodes

    def mark(self, name: str, index: np.ndarray, where: np.ndarray) -> None:
        """Set fact ``name`` at ``index (n,)`` in the current episode, for the streams in ``where (n,)``."""
        self.facts[name][self.rows[where], self.slot, index[where]] = True

    def seen(self, name: str) -> np.ndarray:
        return self.facts[name].any(1)  # (n, size)

    def next_episode(self) -> None:
        self.slot = (self.slot + 1) % self.episodes
        for f in self.facts.values():
            f[:, self.slot] = False


def draw(rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """One index per row, uniform among the True entries of ``allowed (n, k)`` (any, where none is)."""
    allowed = allowed | ~allowed.any(1, keepdims=True)
    return (rng.random(allowed.shape) * allowed).argmax(1)


def walk(rng: np.random.Generator, obs: np.ndarray, target: np.ndarray, size: int, eps: float) -> np.ndarray:
    """Moves ``(n,)`` towards the target cells ``(n,)``: a random move that shortens the way (stay
    when there), or with probability ``eps`` a uniform-random action."""
    d = np.stack(divmod(target, size), 1) - obs  # (n, 2) to target
    useful = np.stack([d[:, 0] > 0, d[:, 0] < 0, d[:, 1] > 0, d[:, 1] < 0, (d == 0).all(1)], 1)  # (n, 5)
    choice = (rng.random(useful.shape) * useful).argmax(1)
    return np.where(rng.random(len(obs)) < eps, rng.integers(0, 5, len(obs)), choice)


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
    Darkroom and Darkroom-Hard (where the goal pays once per episode).
    """

    def __init__(self, env: GridVectorEnv, cfg: PSRLConfig, steps: int, seed: int = 0):
        s = env.spec_
        self.cfg, self.size = cfg, s.size
        self.memory = Memory(env.num_envs, cfg.memory, s.size * s.size, ("visited", "rewarded"))
        self.rng = np.random.default_rng(seed)
        self.target = np.zeros(env.num_envs, np.int64)
        self._resample(np.ones(env.num_envs, bool))

    def _resample(self, mask: np.ndarray) -> None:
        """New targets for ``mask``: a remembered rewarded cell, else an unvisited one at random."""
        seen = self.memory.seen("rewarded")  # (n, cells)
        pick = np.where(seen.any(1), seen.argmax(1), draw(self.rng, ~self.memory.seen("visited")))
        self.target = np.where(mask, pick, self.target)

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        return walk(self.rng, obs, self.target, self.size, self.cfg.eps)

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t) -> None:
        cell = next_obs[:, 0].astype(np.int64) * self.size + next_obs[:, 1]
        everywhere = np.ones(len(cell), bool)
        self.memory.mark("visited", cell, everywhere)
        self.memory.mark("rewarded", cell, rewards > 0)
        if dones.all():  # fixed horizon: every stream starts a new episode
            self.memory.next_episode()
            self._resample(everywhere)
        else:
            self._resample((cell == self.target) & (rewards <= 0))


class KeyDoorSampler:
    """Posterior sampling for Key-to-Door, with a memory of ``memory`` episodes.

    The key and the door are two unknown cells. A step that pays nothing rules out
    the cell it reached as the key (while the key is not held) or as the door (while
    it is held and the door not yet opened); the first reward of an episode reveals
    the key, the second the door. The learner walks to a remembered key, else to a
    cell drawn among those not ruled out (redrawn when reached without reward); then
    likewise to the door; then it stays. Actions are uniform-random with probability
    ``eps``. Like :class:`PosteriorSampler`, it acts on its last ``memory`` episodes only.
    """

    def __init__(self, env: GridVectorEnv, cfg: PSRLConfig, steps: int, seed: int = 0):
        s = env.spec_
        self.cfg, self.size, n = cfg, s.size, env.num_envs
        self.memory = Memory(n, cfg.memory, s.size * s.size, ("not_key", "not_door", "key", "door"))
        self.rng = np.random.default_rng(seed)
        self.has_key, self.opened = np.zeros(n, bool), np.zeros(n, bool)  # this episode
        self.target = np.zeros(n, np.int64)
        self._resample(np.ones(n, bool))

    def _resample(self, mask: np.ndarray) -> None:
        """New targets for ``mask``: the key, the door, or (once through the door) where it stands."""
        key, door = self.memory.seen("key"), self.memory.seen("door")  # (n, cells)
        to_key = np.where(key.any(1), key.argmax(1), draw(self.rng, ~self.memory.seen("not_key")))
        to_door = np.where(door.any(1), door.argmax(1), draw(self.rng, ~self.memory.seen("not_door")))
        pick = np.where(self.has_key, to_door, to_key)
        self.target = np.where(mask & ~self.opened, pick, self.target)

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        return walk(self.rng, obs, self.target, self.size, self.cfg.eps)

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t) -> None:
        cell = next_obs[:, 0].astype(np.int64) * self.size + next_obs[:, 1]
        paid, m = rewards > 0, self.memory
        m.mark("key", cell, paid & ~self.has_key)
        m.mark("door", cell, paid & self.has_key)
        m.mark("not_key", cell, ~paid & ~self.has_key)
        m.mark("not_door", cell, ~paid & self.has_key & ~self.opened)
        self.opened |= paid & self.has_key
        self.has_key |= paid
        self.target = np.where(self.opened, cell, self.target)  # through the door: stay
        if dones.all():  # fixed horizon: every stream starts a new episode
            m.next_episode()
            self.has_key[:], self.opened[:] = False, False
            self._resample(np.ones(len(cell), bool))
        else:
            self._resample(((cell == self.target) & ~paid) | paid)


class PermutationSampler:
    """Posterior sampling for Darkroom-Permuted, with a memory of ``memory`` episodes.

    The task is one of the 120 permutations of the five actions; the goal is the far
    corner. At each episode start the learner draws a permutation among those that
    agree with every move it remembers (``(s, a) -> s'``, walls included) and follows
    it to the goal for the whole episode, as posterior sampling does; it learns from
    one episode to the next. Actions are uniform-random with probability ``eps``.
    """

    def __init__(self, env: GridVectorEnv, cfg: PSRLConfig, steps: int, seed: int = 0):
        s = env.spec_
        self.cfg, self.size, n = cfg, s.size, env.num_envs
        self.memory = Memory(n, cfg.memory, len(PERMUTATIONS), ("ruled_out",))
        self.goal = np.array(env.core.goal)  # (n, 2)
        self.rng = np.random.default_rng(seed)
        self.belief = draw(self.rng, np.ones((n, len(PERMUTATIONS)), bool))  # (n,) permutation followed

    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        d = self.goal - obs  # (n, 2)
        move = np.select([d[:, 0] > 0, d[:, 0] < 0, d[:, 1] > 0, d[:, 1] < 0], [0, 1, 2, 3], default=4)
        action = np.argmax(PERMUTATIONS[self.belief] == move[:, None], axis=1)  # the action believed to move so
        return np.where(self.rng.random(len(obs)) < self.cfg.eps, self.rng.integers(0, 5, len(obs)), action)

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t) -> None:
        moves = MOVES[PERMUTATIONS[:, actions].T]  # (n, 120, 2): each permutation's move for the action taken
        predicted = np.clip(obs[:, None] + moves, 0, self.size - 1)  # (n, 120, 2)
        wrong = (predicted != next_obs[:, None]).any(-1)  # (n, 120)
        self.memory.facts["ruled_out"][:, self.memory.slot] |= wrong
        if dones.all():  # fixed horizon: every stream starts a new episode
            self.memory.next_episode()
            self.belief = draw(self.rng, ~self.memory.seen("ruled_out"))
