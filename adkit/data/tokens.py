"""The one token batch every stage passes around: training windows, rollout contexts, compressed contexts.

One token per transition (see :mod:`adkit.model`): token ``k`` carries transition ``k``
``(s_k, a_k, r_k, s'_k)``, the state ``q_k = s_{k+1}`` of the decision that follows it and
its step in the stream; its target, when known, is that decision's action ``a_{k+1}``.

:class:`Tokens` is a mapping over the six model inputs, so ``model(**tokens)`` runs it.

>>> tokens = Tokens.from_transitions(sampler.sample(64))   # L + 1 transitions -> L tokens and targets
>>> logits = model(**tokens)                               # (B, L, A)
>>> kept = tokens.gather(idx)                              # (B, K) indices per row -> K tokens
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

INPUTS = ("states", "actions", "rewards", "next_states", "queries", "positions", "episode_return")  # model inputs
STEP_INPUTS = ("states", "actions", "rewards", "next_states", "queries", "episode_return")  # a cache step's, per token


def returns_so_far(rewards: Tensor, starts: Tensor) -> Tensor:
    """Return of each step's episode up to and including the step: ``(..., n)``; ``starts`` (bool,
    ``(..., n)``) marks the first step of each episode (the first step of the array counts as one)."""
    n = rewards.shape[-1]
    total = rewards.cumsum(-1)
    first = torch.where(starts, torch.arange(n, device=rewards.device), 0)
    first = first.cummax(-1).values  # (..., n): index of the step's episode start
    return total - (total - rewards).gather(-1, first)


def gather_rows(idx: Tensor, t: Tensor) -> Tensor:
    """``t`` ``(B, n, ...)`` gathered at ``idx`` ``(B, K)`` along dim 1 -> ``(B, K, ...)``."""
    index = idx.view(*idx.shape, *[1] * (t.dim() - 2))  # (B, K, 1, ...)
    return t.gather(1, index.expand(*idx.shape, *t.shape[2:]))  # (B, K, ...)


@dataclass(eq=False)
class Tokens(Mapping):
    """B contexts of L tokens. Iterating (or ``**``) yields the model inputs only."""

    states: Tensor  # (B, L, 2) state of transition k
    actions: Tensor  # (B, L) action of transition k
    rewards: Tensor  # (B, L) reward of transition k
    next_states: Tensor  # (B, L, 2) true position after transition k
    queries: Tensor  # (B, L, 2) state of the decision after token k (s_{k+1})
    positions: Tensor  # (B, L) step of transition k in its stream (rotary position)
    episode_return: Tensor  # (B, L) return of transition k's episode up to and including it
    targets: Tensor | None = None  # (B, L) action taken at the decision after token k, when known

    # ---- mapping over the model inputs ----------------------------------------------------------------
    def __getitem__(self, key: str) -> Tensor:
        if key not in INPUTS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(INPUTS)

    def __len__(self) -> int:
        return len(INPUTS)

    # ---- shape ------------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return int(self.actions.shape[0])

    @property
    def length(self) -> int:
        return int(self.actions.shape[1])

    def _map(self, fn) -> Tokens:
        """A copy with ``fn`` applied to every tensor field (targets included when present)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if getattr(self, f.name) is not None})

    # ---- selection --------------------------------------------------------------------------------------
    def rows(self, index) -> Tokens:
        """Rows ``index`` (a slice, an int tensor or a list) of every field."""
        return self._map(lambda t: t[index])

    def tokens(self, index) -> Tokens:
        """Tokens ``index`` (a slice along L) of every row."""
        return self._map(lambda t: t[:, index])

    def gather(self, idx: Tensor, renumber: bool = False) -> Tokens:
        """Per-row tokens at ``idx`` ``(B, K)`` (ascending); ``renumber`` numbers them ``0..K-1``."""
        out = self._map(lambda t: gather_rows(idx, t))
        if renumber:
            out.positions = torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1)
        return out

    def repeat_rows(self, reps: int) -> Tokens:
        """Every row repeated ``reps`` times in place (row-major): ``(B * reps, L, ...)``."""
        return self._map(lambda t: t.repeat_interleave(reps, 0))

    def to(self, device) -> Tokens:
        return self._map(lambda t: t.to(device))

    # ---- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_transitions(cls, batch: Mapping[str, Tensor]) -> Tokens:
        """``L + 1`` consecutive transitions per row (``states``, ``actions``, ``rewards``,
        ``next_states``, ``positions``, ``episode_return``) -> ``L`` tokens with their action targets."""
        return cls(states=batch["states"][:, :-1], actions=batch["actions"][:, :-1],
                   rewards=batch["rewards"][:, :-1], next_states=batch["next_states"][:, :-1],
                   queries=batch["states"][:, 1:], positions=batch["positions"][:, :-1],
                   episode_return=batch["episode_return"][:, :-1], targets=batch["actions"][:, 1:].long())

    @classmethod
    def cat(cls, parts: list[Tokens]) -> Tokens:
        """Rows of ``parts`` stacked along the batch (same L)."""
        first = parts[0]
        return cls(**{f.name: (torch.cat([getattr(p, f.name) for p in parts]) if getattr(first, f.name) is not None
                               else None) for f in fields(first)})
