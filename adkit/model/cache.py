"""Key/value caches a rollout steps with.

* :class:`KVCache`: the rolling cache of the last ``n_transit`` tokens, O(n_transit) per
  decision whatever the history length (the model's full context).
* :class:`EvictingCache`: at most K transitions per layer, evicted by a compression strategy
  (:mod:`adkit.compress.evict`), O(K) per decision.

Both take a decision's token in three calls from :meth:`ADTransformer.step`: ``add`` (its
transition), ``update`` per layer (its key and value; returns what the query attends to),
``advance`` (the decision is over).
"""

from __future__ import annotations

import torch

from adkit.compress.evict import Evictor
from adkit.model.rope import apply_rope


class KVCache:
    """Rolling key/value cache of the last ``window`` tokens for every layer.

    Slots are a ring buffer; rotary positions are applied before caching, and
    softmax is order-free, so the slot order never matters.
    """

    wants_attention = False  # nothing here is scored

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, window: int, device=None):
        shape = (batch, n_head, window, head_dim)
        self.k = [torch.zeros(shape, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device) for _ in range(n_layer)]
        self.window, self.length = window, 0  # tokens written so far

    @property
    def position(self) -> int:
        """Rotary position of the next token: its index in the stream."""
        return self.length

    def add(self, *transition) -> None:
        """A new token (its transition is not needed: the ring overwrites the oldest)."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one token's k, v (B, H, 1, dh); return all slots and a (1, window) validity mask."""
        slot = self.length % self.window
        self.k[layer][:, :, slot] = k[:, :, 0]
        self.v[layer][:, :, slot] = v[:, :, 0]
        valid = torch.arange(self.window, device=k.device)[None, :] < min(self.length + 1, self.window)
        return self.k[layer], self.v[layer], valid

    def advance(self) -> None:
        self.length += 1

    def nbytes(self) -> int:
        """Bytes held between decisions."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class EvictingCache:
    """A key/value cache of at most K transitions per keep set, evicted by ``evictor``'s strategy
    (one set per stream, or one per layer and head: :class:`~adkit.compress.evict.Evictor`).

    K + 1 slots per layer and head: the K kept between decisions and the deciding token's own. Keys
    are cached rotated at their stream positions, which therefore stay the original ones; with
    ``back`` (the rotary ``(cos, sin)`` of one position back, for models that read renumbered
    contexts) they are cached at their place ``0..K`` among the held instead, and each eviction
    rotates the keys after the evicted one back by one.
    """

    def __init__(self, n_layer: int, n_head: int, head_dim: int, evictor: Evictor,
                 back: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.evictor, self.back = evictor, back
        batch = evictor.batch
        shape = (batch, n_head, evictor.budget + 1, head_dim)
        device = evictor.index.device
        self.k = [torch.zeros(shape, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device) for _ in range(n_layer)]
        self.streams = torch.arange(batch, device=device)[:, None]  # (B, 1)
        self.heads = torch.arange(n_head, device=device)[None, :]  # (1, H)

    @property
    def length(self) -> int:
        return self.evictor.length

    @property
    def position(self) -> int:
        """Rotary position of the next token: its index in the stream, or its place among the held."""
        return self.length if self.back is None else min(self.length, self.evictor.budget)

    @property
    def wants_attention(self) -> bool:
        return self.evictor.wants_attention

    def add(self, states, actions, rewards, next_states) -> None:
        self.evictor.add(states, actions, rewards, next_states)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one token's k, v (B, H, 1, dh) into each keep set's new slot; return the slots and the
        (B, 1 or H, 1, K + 1) mask of held ones."""
        ev = self.evictor
        slot = ev.per_layer(ev.slot, layer).expand(k.shape[:2])  # (B, H)
        self.k[layer][self.streams, self.heads, slot] = k[:, :, 0]
        self.v[layer][self.streams, self.heads, slot] = v[:, :, 0]
        return self.k[layer], self.v[layer], ev.per_layer(ev.valid, layer)[:, :, None, :]

    def record(self, pattern: torch.Tensor) -> None:
        """One layer's attention (B, H, 1, K + 1) of the deciding query, for attention-scored strategies."""
        self.evictor.observe(pattern)

    def advance(self) -> None:
        ev = self.evictor
        ev.evict()
        moved = ev.shifted() if self.back is not None else None
        if moved is None:
            return
        for layer, k in enumerate(self.k):  # renumbered: the keys after the evicted one move one place back
            m = ev.per_layer(moved, layer)[..., None]  # (B, 1 or H, K + 1, 1)
            self.k[layer] = torch.where(m, apply_rope(k, *self.back), k)

    def nbytes(self) -> int:
        """Bytes held between decisions: keys, values and the eviction bookkeeping."""
        ev = self.evictor
        book = [ev.index, ev.valid, ev.order, ev.current, ev.accumulated, ev.recent, *ev.ring.values()]
        book = [t for t in book if t is not None]
        return sum(t.numel() * t.element_size() for t in self.k + self.v + book)
