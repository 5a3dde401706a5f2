"""Eviction: which transitions a key/value cache of at most K entries holds, decision by decision.

Today's compressed rollouts re-encode a kept subset at every decision (``--kv reencode``).
An evicting cache (``--kv evict``, :class:`adkit.model.cache.EvictingCache`) does what
StreamingLLM, H2O, SnapKV, TOVA and NVIDIA kvpress do instead: each decision appends its own
token, attends to the K cached transitions plus that token, and the cache then keeps K of
those K + 1 by the strategy's score, through the same shared keep step
(:func:`~adkit.compress.strategies.keep_top`) the re-encoding path uses. A decision then
costs O(K), however long the history.

Conventions (:class:`Evictor`):

* keep sets are per row (stream) and shared by every layer and head;
* the newest token is a candidate like any other (TOVA may evict it; recency never does);
* the model's window still binds: a transition about to leave the next decision's window
  (``n_transit - 1`` behind it) is evicted first, as the rolling cache overwrites it, so no
  decision sees an offset the model was never trained on;
* positions stay the stream's own (rotary): kept keys were rotated when cached.

What a strategy scores with (:attr:`Compressor.evict_attention`), all per cached entry and
averaged over layers and heads: ``"current"``, the deciding query's attention (TOVA: the
``attention`` strategy, ``adaptive``); ``"accumulated"``, the attention it has received since
it entered (H2O); ``"window"``, the mean over the last ``window`` decisions (SnapKV). Scores
may instead be *fed*: a ``(B, T, T)`` pattern whose row ``p`` scores the cache at the
decision of token ``p`` (a fixed scorer's attention, so training can replay the eviction).

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
KV = ("reencode", "evict")  # the two ways to keep a compressed context: re-encoded each decision, or this cache

NOT_EVICTABLE = {
    "threshold": "it keeps a number of transitions that varies per decision; an evicting cache has a fixed capacity",
    "best-episode": "it keeps whole past episodes, which a cache that evicts one entry per decision rarely holds",
    "oracle": "it scores by re-running the model on other contexts, which cached keys and values cannot give",
    "none": "it keeps everything: the full rolling cache is the model's default (no --compressor)",
    "full": "it keeps everything: the full rolling cache is the model's default (no --compressor)",
}


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
    """The bookkeeping of an evicting cache for ``batch`` rows: K + 1 slots per row, what each holds,
    the attention statistics strategies score with, and the eviction step.

    Per decision: :meth:`add` the new token (it takes the free slot), then (for attention-scored
    strategies) :meth:`observe` each layer's attention, then :meth:`evict`.
    ``feed``: ``(B, T, T)`` scores fed instead of the model's own attention (row ``p`` at the
    decision of token ``p``); ``generator``: randomness of ``random`` / ``exponential``.
    """

    def __init__(self, compressor: Compressor, batch: int, window: int, feed: Tensor | None = None,
                 generator: torch.Generator | None = None, device=None):
        check_evictable(compressor, window)
        self.compressor, self.window, self.feed, self.generator = compressor, window, feed, generator
        self.budget = k = compressor.budget
        self.stat = getattr(compressor, "evict_attention", "current")
        slots = (batch, k + 1)
        self.index = torch.full(slots, -1, dtype=torch.long, device=device)  # token index held; -1: free slot
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)  # its stream position (rotary)
        self.states = torch.zeros(*slots, 2, dtype=torch.long, device=device)
        self.actions = torch.zeros(slots, dtype=torch.long, device=device)
        self.rewards = torch.zeros(slots, device=device)
        self.next_states = torch.zeros(*slots, 2, dtype=torch.long, device=device)
        self.current = torch.zeros(slots, device=device)  # this decision's attention, summed over layers
        self.accumulated = torch.zeros(slots, device=device)  # attention received since the entry came in
        span = getattr(compressor, "window", 1) if self.stat == "window" else 1
        self.recent = torch.zeros(span, *slots, device=device)  # the last ``span`` decisions' attention, oldest first
        self.layers_seen, self.length = 0, 0  # layers observed this decision; tokens added so far
        self.rows = torch.arange(batch, device=device)
        self.slot = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) slot of the newest token

    @property
    def wants_attention(self) -> bool:
        """Whether the model must hand over its attention (:meth:`observe`) at each decision."""
        return self.compressor.needs_attention and self.feed is None

    @property
    def valid(self) -> Tensor:
        """``(B, K + 1)``: slots that hold a transition."""
        return self.index >= 0

    def held(self) -> int:
        """Transitions held between decisions, the same in every row (at most K)."""
        return int(self.valid.sum(-1).max())

    def add(self, states, actions, rewards, next_states, positions=None) -> Tensor:
        """Put token ``length`` (fields ``(B, ·)``) in each row's free slot; returns the slots ``(B,)``."""
        self.slot = (~self.valid).int().argmax(-1)  # (B,) the first free slot (there is always one)
        at = (self.rows, self.slot)
        self.index[at] = self.length
        self.positions[at] = self.length if positions is None else positions.long()
        self.states[at], self.actions[at] = states.long(), actions.long()
        self.rewards[at], self.next_states[at] = rewards.float(), next_states.long()
        for stat in (self.accumulated, *self.recent):
            stat[at] = 0.0
        self.current.zero_()
        self.layers_seen = 0
        return self.slot

    def observe(self, pattern: Tensor) -> None:
        """One layer's attention of the deciding query, ``(B, H, 1, K + 1)`` over the slots."""
        self.current += pattern.mean(1)[:, 0]
        self.layers_seen += 1

    def _scores_now(self) -> Tensor:
        """``(B, K + 1)`` this decision's attention per slot: the layer mean, or the fed row."""
        if self.feed is not None:
            row = self.feed[:, self.length]  # (B, T)
            return row.gather(1, self.index.clamp_min(0)) * self.valid
        return self.current / max(1, self.layers_seen)

    def evict(self) -> None:
        """End the decision: update the statistics and, once K + 1 are held, evict one per row."""
        now = self._scores_now()
        self.accumulated += now
        self.recent = torch.cat([self.recent[1:], now[None]])
        self.length += 1
        if self.held() <= self.budget:
            return
        order = self.index.argsort(-1)  # (B, K + 1) slots oldest first (all valid once full)
        take = lambda t: t.gather(1, order if t.dim() == 2 else order[..., None].expand_as(t))  # noqa: E731
        stat = {"current": now, "accumulated": self.accumulated, "window": self.recent.mean(0)}[self.stat]
        h = Transitions.build(type(self.compressor).__name__, take(self.states), take(self.actions),
                              take(self.rewards), take(self.next_states), take(stat), take(self.positions),
                              self.generator, None)
        scores = self.compressor.evict_score(h, self.budget).float()  # (B, K + 1)
        leaving = take(self.index) <= self.length - self.window  # outside the next decision's window
        kept = keep_top(scores.masked_fill(leaving, -torch.inf), self.budget)  # (B, K) chronological indices
        gone = torch.ones_like(scores, dtype=torch.bool).scatter_(1, kept, False).int().argmax(-1)  # (B,)
        self.index[self.rows, order[self.rows, gone]] = -1


@torch.no_grad()
def keep_mask(compressor: Compressor, tokens, window: int, feed: Tensor | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """``(B, L, L)`` bool: which tokens each query of ``tokens`` (B, L, ·) attends to under an evicting
    cache that started empty at the first token: query ``p`` sees what the cache held after
    decision ``p - 1``, plus itself. Strategies scored by attention need ``feed`` ``(B, L, L)``."""
    B, L = tokens["actions"].shape
    ev = Evictor(compressor, B, window, feed, generator, tokens["actions"].device)
    if compressor.needs_attention and feed is None:
        raise ValueError(f"{name_of(compressor)} scores by attention: replaying its eviction "
                         "without the model needs the scores fed (feed=, e.g. a scorer's pattern)")
    mask = torch.zeros(B, L, L + 1, dtype=torch.bool, device=tokens["actions"].device)  # column L: free slots
    for p in range(L):
        ev.add(tokens["states"][:, p], tokens["actions"][:, p], tokens["rewards"][:, p],
               tokens["next_states"][:, p], tokens["positions"][:, p])
        mask[:, p].scatter_(1, ev.index.masked_fill(~ev.valid, L), True)  # held tokens' columns
        ev.evict()
    return mask[..., :L]
