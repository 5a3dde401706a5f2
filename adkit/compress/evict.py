"""Eviction: which transitions a key/value cache of at most K entries holds, decision by decision.

Today's compressed rollouts re-encode a kept subset at every decision (``--kv reencode``).
An evicting cache (``--kv evict``, :class:`adkit.model.cache.EvictingCache`) does what
StreamingLLM, H2O, SnapKV, TOVA and NVIDIA kvpress do instead: each decision appends its own
token, attends to the K cached transitions plus that token, and the cache then keeps K of
those K + 1 by the strategy's score, through the same shared keep step
(:func:`~adkit.compress.strategies.keep_top`) the re-encoding path uses. A decision then
costs O(K), however long the history.

Conventions (:class:`Evictor`):

* keep sets (:data:`SETS`, a strategy's :attr:`Compressor.evict_sets`): one per stream, shared by every
  layer and head, for strategies that do not read attention (their choice would be the same in each);
  one per layer, scored by the heads' mean, for TOVA (``attention``) and ``adaptive``, as TOVA does;
  one per layer and head, each scored by its own head, for H2O and SnapKV, as they do;
* the newest token is a candidate like any other (TOVA may evict it; recency never does);
* the model's window still binds: a transition about to leave the next decision's window
  (``n_transit - 1`` behind it) is evicted first, as the rolling cache overwrites it, so no
  decision sees an offset the model was never trained on;
* positions stay the stream's own (rotary): kept keys were rotated when cached; a model trained on
  renumbered contexts (``positions="renumber"``) gets them renumbered instead, the K held ``0..K - 1``
  in order and the decision K, each eviction rotating the keys after it one position back
  (:meth:`Evictor.shifted`).

What a strategy scores with (:attr:`Compressor.evict_attention`), per cached entry: ``"current"``,
the deciding query's attention (TOVA: the ``attention`` strategy, ``adaptive``); ``"accumulated"``,
the attention it has received since it entered (H2O); ``"window"``, the mean over the last ``window``
decisions (SnapKV). Scores may instead be *fed*: a pattern whose row ``p`` scores the cache at the
decision of token ``p`` (a fixed scorer's attention, per layer and head, so training can replay
the eviction).

Strategies without an eviction form (:data:`NOT_EVICTABLE`) raise ValueError with the reason.

:func:`keep_mask` replays the eviction over a training window without a model and returns the
per-query keep mask: ``model(**tokens, keep=mask)`` computes, in one pass, exactly the logits
an evicting-cache rollout over those tokens computes (``tests/test_evict.py``), so a model can
be trained the way it is used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adkit.compress.strategies import Compressor, Transitions, keep_top, name_of

STATS = ("current", "accumulated", "window")
SETS = ("stream", "layer", "head")  # keep sets per stream: one; one per layer; one per layer and head
KV = ("reencode", "evict")  # the two ways to keep a compressed context: re-encoded each decision, or this cache

NOT_EVICTABLE = {
    "threshold": "it keeps a number of transitions that varies per decision; an evicting cache has a fixed capacity",
    "best-episode": "it keeps whole past episodes, which a cache that evicts one entry per decision rarely holds",
    "oracle": "it scores by re-running the model on other contexts, which cached keys and values cannot give",
    "none": "it keeps everything: the full rolling cache is the model's default (no --compressor)",
    "full": "it keeps everything: the full rolling cache is the model's default (no --compressor)",
}


def kv_forms(name: str, kvs) -> list[str]:
    """The ways among ``kvs`` (of :data:`KV`) strategy ``name`` can keep a context: ``reencode`` always,
    ``evict`` unless it is in :data:`NOT_EVICTABLE`."""
    return [kv for kv in kvs if kv == "reencode" or name not in NOT_EVICTABLE]


def set_shape(sets: str, n_layer: int, n_head: int) -> tuple[int, int]:
    """``(layers, heads)`` of independent keep sets per stream for ``sets`` (one of :data:`SETS`)."""
    if sets not in SETS:
        raise ValueError(f"keep sets are one of {SETS}, got {sets!r}")
    return {"stream": (1, 1), "layer": (n_layer, 1), "head": (n_layer, n_head)}[sets]


def check_evictable(compressor: Compressor, window: int) -> None:
    """ValueError unless ``compressor`` can drive a cache under a ``window``-token attention window:
    an evictable strategy whose budget is 1 .. window - 1."""
    name = name_of(compressor)
    if name in NOT_EVICTABLE:
        raise ValueError(f"{name!r} has no evicting-cache form: {NOT_EVICTABLE[name]}; use --kv reencode")
    k = compressor.budget
    if not 1 <= k <= window - 1:
        raise ValueError(f"an evicting cache keeps 1..{window - 1} transitions (the model's window, n_transit "
                         f"{window}, minus the decision's own token), got budget {k}")


class Evictor:
    """The bookkeeping of an evicting cache for ``batch`` streams: K + 1 slots per keep set, what each
    holds, the attention statistics strategies score with, and the eviction step.

    ``sets``: ``(layers, heads)`` keep sets per stream (:func:`set_shape`): ``(1, 1)`` one shared by
    every layer and head, ``(n_layer, 1)`` one per layer, ``(n_layer, n_head)`` one per layer and head;
    each is scored by the mean attention of the layers and heads it serves. Rows of the slot tensors
    are ``stream x layer x head``. Per decision: :meth:`add` the new token (it takes each set's free
    slot), then (for attention-scored strategies) :meth:`observe` each layer's attention, then
    :meth:`evict`. ``feed``: scores fed instead of the model's own attention (row ``p`` at the decision
    of token ``p``), each layer's and head's ``(B, n_layer, n_head, T, T)`` (or ``(B, T, T)``, already
    averaged, for one set per stream); ``generator``: randomness of ``random`` / ``exponential``.
    """

    def __init__(self, compressor: Compressor, batch: int, window: int, feed: Tensor | None = None,
                 generator: torch.Generator | None = None, device=None, sets: tuple[int, int] = (1, 1)):
        check_evictable(compressor, window)
        self.compressor, self.window, self.generator, self.sets = compressor, window, generator, sets
        self.batch = batch
        self.budget = k = compressor.budget
        self.stat = getattr(compressor, "evict_attention", "current")
        groups = sets[0] * sets[1]
        if feed is not None:
            per_head = feed.dim() == 5 and feed.shape[0] == batch and all(
                n in (1, f) for n, f in zip(sets, feed.shape[1:3]))
            if not (per_head or (feed.dim() == 3 and feed.shape[0] == batch and groups == 1)):
                raise ValueError(f"fed scores of shape {tuple(feed.shape)} do not fit {batch} streams with {sets} "
                                 "(layers, heads) keep sets: expected (B, n_layer, n_head, T, T), or (B, T, T) "
                                 "for one set per stream")
            if per_head and sets[1] == 1:  # each set scored by the mean over the layers and heads it serves
                feed = feed.mean((1, 2) if sets[0] == 1 else 2, keepdim=True)
            feed = feed.reshape(batch * groups, *feed.shape[-2:])  # (rows, T, T)
        self.feed = feed
        # the transitions of each stream's last ``window`` tokens (a ring, token p at p % window): slots
        # point into it, so keep sets per head cost one index per slot, not a copy of the transition
        self.ring = {"states": torch.zeros(batch * window, 2, dtype=torch.long, device=device),
                     "actions": torch.zeros(batch * window, dtype=torch.long, device=device),
                     "rewards": torch.zeros(batch * window, device=device),
                     "next_states": torch.zeros(batch * window, 2, dtype=torch.long, device=device),
                     "positions": torch.zeros(batch * window, dtype=torch.long, device=device)}  # (B x window, ·)
        rows, n = batch * groups, k + 1
        self.index = torch.full((rows, n), -1, dtype=torch.long, device=device)  # token index held; -1: free slot
        self.valid = torch.zeros(rows, n, dtype=torch.bool, device=device)  # slots that hold a transition
        self.order = torch.arange(n, device=device).repeat(rows, 1)  # (rows, K + 1) slots, oldest first once full
        self.current = torch.zeros(rows, n, device=device)  # this decision's attention (layer-summed if shared)
        # what the strategy scores with, kept only for it: attention received since the entry came in (H2O),
        # the last ``window`` decisions' attention (SnapKV; a ring)
        self.accumulated = torch.zeros(rows, n, device=device) if self.stat == "accumulated" else None
        self.recent = torch.zeros(compressor.window, rows, n, device=device) if self.stat == "window" else None
        self.layers_seen, self.length = 0, 0  # layers observed this decision; tokens added so far
        self.rows = torch.arange(rows, device=device)
        self.stream = torch.arange(batch, device=device).repeat_interleave(groups)  # (rows,) stream of each row
        self.stream_start = torch.arange(batch, device=device) * window  # (B,) where each stream's ring begins
        self.slot = torch.zeros(rows, dtype=torch.long, device=device)  # (rows,) slot of the newest token
        self.gone: Tensor | None = None  # (rows,) the last eviction's place in the order, oldest 0 (None: none yet)

    @property
    def wants_attention(self) -> bool:
        """Whether the model must hand over its attention (:meth:`observe`) at each decision."""
        return self.compressor.needs_attention and self.feed is None

    def held(self) -> int:
        """Transitions held between decisions, the same in every keep set (at most K)."""
        return min(self.length, self.budget)

    def per_layer(self, t: Tensor, layer: int) -> Tensor:
        """Layer ``layer``'s part of a ``(rows, ...)`` tensor: ``(B, heads, ...)``, heads 1 when shared."""
        layers, heads = self.sets
        return t.view(-1, layers, heads, *t.shape[1:])[:, layer % layers]

    def add(self, states, actions, rewards, next_states, positions=None) -> Tensor:
        """Put token ``length`` (fields ``(B, ·)``) in each keep set's free slot; returns the slots ``(rows,)``."""
        at = self.stream_start + self.length % self.window  # (B,) each stream's ring entry for this token
        pos = torch.full_like(actions, self.length) if positions is None else positions
        for name, value in (("states", states), ("actions", actions), ("rewards", rewards),
                            ("next_states", next_states), ("positions", pos)):
            self.ring[name][at] = value.to(self.ring[name].dtype)
        # the free slot: the next one while filling, then the one the last eviction emptied (the newest in order)
        self.slot = self.order[:, min(self.length, self.budget)]  # (rows,)
        new = (self.rows, self.slot)
        self.index[new], self.valid[new] = self.length, True
        if self.accumulated is not None:
            self.accumulated[new] = 0.0
        if self.recent is not None:
            self.recent[:, self.rows, self.slot] = 0.0
        self.current.zero_()
        self.layers_seen = 0
        return self.slot

    def observe(self, pattern: Tensor) -> None:
        """One layer's attention of the deciding query, ``(B, H, 1, K + 1)`` over its sets' slots."""
        layers, heads = self.sets
        p = pattern[:, :, 0] if heads > 1 else pattern.mean(1)  # (B, heads, K + 1)
        now = self.per_layer(self.current, self.layers_seen)  # (B, heads, K + 1), a view
        if layers == 1:
            now += p  # summed over layers; :meth:`_scores_now` averages
        else:
            now.copy_(p)
        self.layers_seen += 1

    def _scores_now(self) -> Tensor:
        """``(rows, K + 1)`` this decision's attention per slot (averaged over the layers and heads
        each set serves), or the fed row."""
        if self.feed is not None:
            row = self.feed[:, self.length]  # (rows, T)
            return row.gather(1, self.index.clamp_min(0)) * self.valid
        return self.current / (max(1, self.layers_seen) if self.sets[0] == 1 else 1)

    def evict(self) -> None:
        """End the decision: update the statistics and, once K + 1 are held, evict one per keep set."""
        scored = self.compressor.needs_attention
        now = self._scores_now() if scored else None
        if self.accumulated is not None:
            self.accumulated += now
        if self.recent is not None:
            self.recent[self.length % len(self.recent)] = now
        self.length += 1
        if self.length <= self.budget:
            return
        held = self.index.gather(1, self.order)  # (rows, K + 1) token indices, chronological
        reads = self.compressor.evict_fields
        flat = (self.stream_start[self.stream, None] + held % self.window).view(-1) if reads else None  # rings
        field = {name: t.index_select(0, flat).view(*held.shape, *t.shape[1:]) if name in reads
                 else t.new_zeros(()).expand(*held.shape, *t.shape[1:]) for name, t in self.ring.items()}
        stat = None
        if scored:  # (rows, K + 1) chronological
            stat = now if self.stat == "current" else self.accumulated if self.stat == "accumulated" \
                else self.recent.mean(0)
            stat = stat.gather(1, self.order)
        h = Transitions.build(type(self.compressor).__name__, field["states"], field["actions"], field["rewards"],
                              field["next_states"], stat, field["positions"], self.generator, None)
        scores = self.compressor.evict_score(h, self.budget).float()  # (rows, K + 1)
        leaving = held <= self.length - self.window  # outside the next decision's window
        kept = keep_top(scores.masked_fill(leaving, -torch.inf), self.budget)  # (rows, K) chronological indices
        # kept is 0..K without the evicted one, so it is shifted by one from there on
        gone = self.budget - (kept != torch.arange(self.budget, device=kept.device)).sum(-1)  # (rows,)
        slot = self.order[self.rows, gone]  # (rows,) emptied; it goes to the end of the order for the next token
        self.index[self.rows, slot], self.valid[self.rows, slot] = -1, False
        self.order = torch.cat([self.order.gather(1, kept), slot[:, None]], 1)
        self.gone = gone

    def shifted(self) -> Tensor | None:
        """``(rows, K + 1)`` bool: the slots the last eviction moved one place earlier in the order (those
        after the evicted entry), which a renumbered context numbers one lower; None if nothing was evicted."""
        if self.gone is None:
            return None
        place = torch.arange(self.budget + 1, device=self.order.device)  # (K + 1,) places in the new order
        moved = (place >= self.gone[:, None]) & (place < self.budget)  # (rows, K + 1) by place
        return torch.zeros_like(moved).scatter_(1, self.order, moved)  # by slot


@torch.no_grad()
def keep_mask(compressor: Compressor, tokens, window: int, feed: Tensor | None = None,
              generator: torch.Generator | None = None, sets: str | None = None) -> Tensor:
    """Which tokens each query of ``tokens`` (B, L, ·) attends to under an evicting cache that started
    empty at the first token: query ``p`` sees what the cache held after decision ``p - 1``, plus
    itself. Strategies scored by attention need ``feed``, a scorer's ``(B, n_layer, n_head, L, L)``
    (or ``(B, L, L)`` for one set per stream). ``sets`` (default the strategy's own) as in
    :data:`SETS`. Returns bool ``(B, L, L)`` for one set per stream, else ``(B, layers, heads, L, L)``."""
    B, L = tokens["actions"].shape
    if compressor.needs_attention and feed is None:
        raise ValueError(f"{name_of(compressor)} scores by attention: replaying its eviction "
                         "without the model needs the scores fed (feed=, e.g. a scorer's pattern)")
    sets = sets or compressor.evict_sets
    if sets != "stream" and (feed is None or feed.dim() != 5):
        raise ValueError(f"keep sets per {sets} need the scores fed per layer and head (B, n_layer, n_head, L, L)")
    shape = (1, 1) if sets == "stream" else set_shape(sets, *feed.shape[1:3])
    ev = Evictor(compressor, B, window, feed, generator, tokens["actions"].device, shape)
    mask = torch.zeros(len(ev.rows), L, L + 1, dtype=torch.bool, device=tokens["actions"].device)  # column L: free
    for p in range(L):
        ev.add(tokens["states"][:, p], tokens["actions"][:, p], tokens["rewards"][:, p],
               tokens["next_states"][:, p], tokens["positions"][:, p])
        mask[:, p].scatter_(1, ev.index.masked_fill(~ev.valid, L), True)  # held tokens' columns
        ev.evict()
    mask = mask[..., :L]  # (rows, L, L)
    return mask if shape == (1, 1) else mask.view(B, *shape, L, L)
