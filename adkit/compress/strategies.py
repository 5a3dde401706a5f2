"""History compressors: keep K of the n context transitions of each row.

As in NVIDIA kvpress presses, a strategy only *scores* the n transitions of each
row (``score(h, k) -> (B, n)``); one shared step (``keep_top``) keeps the k best
per row, ties going to the more recent, in chronological order (``select``), and
``compress`` gathers the four transition tensors to them. A budget is always a
number of transitions kept. One code path serves retraining (training windows)
and training-free rollouts (the context of each decision).

Strategies are small dataclasses with one ``budget`` field; the original toolkit's
constructor names (``target_length``, ``keep_recent``, ``max_keep``) are accepted and
readable as aliases of it.

>>> c = make("h2o", 16)
>>> s, a, r, s2 = c.compress(states, actions, rewards, next_states, attention=pattern)

Shapes: each of the four tensors is ``(B, n, *)`` with any trailing dimensions
(adkit's ``(B, n)`` actions and rewards, or the original toolkit's one-hot actions
``(B, n, A)`` and rewards ``(B, n, 1)``); positions ``(B, n)`` int64 (absolute step
in the learning stream; default ``arange(n)``). ``attention``: scores ``(B, n)`` or a
pattern ``(B, T, T)`` / ``(B, H, T, T)`` (heads averaged) whose last row scores the
``n = T - 1`` transitions; read on every call, never cached. Histories with
``n <= K`` come back unchanged (the same tensors), attention or not.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from adkit.data.tokens import Tokens, gather_rows


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _count(value, name: str, low: int = 1) -> int:
    """``value`` as an int >= ``low`` (numpy integers welcome), else ValueError."""
    _check(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low,
           f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def gather(indices: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Gather each ``(B, n, ...)`` tensor at ``indices`` ``(B, K)`` along dim 1 -> ``(B, K, ...)``."""
    return tuple(gather_rows(indices, t) for t in tensors)


def keep_top(scores: Tensor, k: int) -> Tensor:
    """The shared select step: ``(B, n)`` scores -> ``(B, k)`` indices of the top k, ascending.

    Ties are broken in favour of the more recent transition."""
    n = scores.shape[-1]
    if k == n - 1:  # drop one (an evicting cache's step): the lowest, ties dropping the oldest; no sort needed
        drop = scores.argmin(-1, keepdim=True)  # (B, 1), the first (oldest) of equal lowest
        i = torch.arange(k, device=scores.device)
        return i + (i >= drop)  # (B, k)
    order = torch.argsort(scores.flip(-1), dim=-1, descending=True, stable=True)  # (B, n), 0 = newest
    return (n - 1 - order[:, :k]).sort(dim=-1).values


@dataclass(frozen=True)
class Transitions:
    """One validated batch of n transitions per row, as strategies score it.

    ``reward`` ``(B, n)``: each transition's reward (trailing dimensions summed);
    ``scores`` ``(B, n)``: the query row's attention to each transition (heads
    averaged; SnapKV's: its observation window's mean); ``pattern`` ``(B, T, T)``: the
    head-averaged pattern, when one was passed; ``context``: the model inputs these
    transitions came from, decision token last, when the caller compresses a model context
    (the oracle's model policy reads it).
    ``owner`` names the compressor in error messages."""

    states: Tensor
    actions: Tensor
    rewards: Tensor
    next_states: Tensor
    reward: Tensor
    positions: Tensor
    scores: Tensor | None
    pattern: Tensor | None
    generator: torch.Generator | None
    context: Tokens | None
    owner: str

    @property
    def n(self) -> int:
        return self.actions.shape[1]

    @property
    def n_rows(self) -> int:
        return self.actions.shape[0]

    def index(self) -> Tensor:
        """``(B, n)`` transition index 0..n-1: the recency score (newest highest)."""
        return torch.arange(self.n, device=self.reward.device).expand_as(self.reward)

    def need_scores(self) -> Tensor:
        _check(self.scores is not None, f"{self.owner} needs attention: pass scores (B, n) "
               "or a pattern (B, T, T) / (B, H, T, T) with T = n + 1")
        return self.scores

    @classmethod
    def build(cls, owner, states, actions, rewards, next_states, attention, positions, generator, context):
        tensors = dict(states=states, actions=actions, rewards=rewards, next_states=next_states)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        _check(all(v.dim() >= 2 for v in tensors.values()) and len({v.shape[:2] for v in tensors.values()}) == 1,
               f"expected the four tensors as (B, n, *) with the same B and n, got {shapes}")
        B, n = actions.shape[:2]
        positions = torch.arange(n) if positions is None else torch.as_tensor(positions)
        _check(tuple(positions.shape) in ((n,), (B, n)),
               f"positions of shape {tuple(positions.shape)} do not fit {B} rows of n={n} transitions")
        device = actions.device
        positions = positions.to(device).long().expand(B, n)
        reward = rewards.float() if rewards.dim() == 2 else rewards.flatten(2).float().sum(-1)  # (B, n, *) -> (B, n)
        scores, pattern = _read_attention(attention, B, n, device)
        return cls(states, actions, rewards, next_states, reward, positions, scores, pattern, generator, context,
                   owner)


def _read_attention(attention, B: int, n: int, device) -> tuple[Tensor | None, Tensor | None]:
    """-> (scores (B, n), pattern (B, T, T) or None); (None, None) when no attention."""
    if attention is None:
        return None, None
    a = torch.as_tensor(attention, device=device).float()
    if a.dim() == 4:
        a = a.mean(1)  # (B, H, T, T) -> (B, T, T)
    _check(tuple(a.shape) in ((B, n), (B, n + 1, n + 1)),
           f"attention of shape {tuple(torch.as_tensor(attention).shape)} does not fit {B} rows of "
           f"n={n} transitions: expected (B, n)=({B}, {n}), (B, T, T) or (B, H, T, T) with T={n + 1}")
    _check(bool(torch.isfinite(a).all()), "attention contains NaN or inf")
    return (a, None) if a.dim() == 2 else (a[:, -1, :n], a)  # last row over the n transitions


# ---- score pieces that strategies compose ----------------------------------------------------------------


def uniform_scores(h: Transitions, k: int) -> Tensor:
    """``(B, n)``: 1 on k evenly spaced transitions from the newest (n-1) back to the first (0)."""
    idx = torch.floor(torch.linspace(h.n - 1, 0, k, dtype=torch.float64) + 0.5).long()  # step >= 1: unique
    mask = torch.zeros(h.n, device=h.reward.device).index_fill_(0, idx.to(h.reward.device), 1.0)
    return mask.expand_as(h.reward)


def gumbel_scores(h: Transitions, seed: int) -> Tensor:
    """``(B, n)`` Gumbel noise from the call's generator (else a fresh one seeded with ``seed``):
    the top-K of ``log w + gumbel`` samples K without replacement with probability ∝ w."""
    g = h.generator if h.generator is not None else torch.Generator().manual_seed(seed)
    u = torch.rand(h.reward.shape, generator=g, device=g.device, dtype=torch.float64)
    return -(-u.clamp_min(1e-300).log()).log().to(h.reward.device)


# ---- the strategies -------------------------------------------------------------------------------------


def strategy(*aliases: str):
    """Class decorator: a dataclass whose ``budget`` may also be given (and read) under ``aliases``,
    the original toolkit's constructor argument names."""

    def wrap(cls):
        cls = dataclass(cls, unsafe_hash=True)  # hashable, as the original classes were
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            for name in aliases:
                if name in kwargs:
                    _check("budget" not in kwargs, f"give the budget once, as budget= or {name}=")
                    kwargs["budget"] = kwargs.pop(name)
            init(self, *args, **kwargs)

        cls.__init__, cls.aliases = __init__, aliases
        return cls

    return wrap


class Compressor:
    """Base of every strategy: ``score`` the n transitions, keep the top ``budget`` of each row."""

    aliases: ClassVar[tuple[str, ...]] = ()  # the original constructor names of ``budget``
    needs_attention: ClassVar[bool] = False  # whether ``select`` must be given attention
    evict_attention: ClassVar[str] = "current"  # what an evicting cache scores with (adkit.compress.evict.STATS)
    evict_sets: ClassVar[str] = "stream"  # an evicting cache's keep sets (adkit.compress.evict.SETS)
    # the transition fields ``evict_score`` reads; an evicting cache hands the others over as zeros
    evict_fields: ClassVar[tuple[str, ...]] = ("states", "actions", "rewards", "next_states", "positions")
    budget: int

    def __post_init__(self):
        self.budget = _count(self.budget, self.aliases[0] if self.aliases else "budget")

    def __getattr__(self, name: str):
        if name in type(self).aliases:  # e.g. RecencyCompressor(8).keep_recent == 8
            return self.budget
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, "budget" if name in type(self).aliases else name, value)  # c.keep_recent = 4

    def keep_count(self, h: Transitions) -> int:
        """Transitions to keep for this batch (one K per batch)."""
        return self.budget

    def cache_attention(self, weights) -> None:
        """The original toolkit's way to hand over attention: ``weights`` (any form ``select`` takes)
        serve the next ``compress`` / ``select`` call only, then are dropped, so a stale pattern is never
        reused. Passing ``attention=`` to the call is the recommended way."""
        self._cached_attention = weights

    def score(self, h: Transitions, k: int) -> Tensor:
        """``(B, n)`` scores; the k highest of each row are kept."""
        raise NotImplementedError

    def evict_score(self, h: Transitions, k: int) -> Tensor:
        """``(B, k + 1)`` scores of an evicting cache's entries (chronological, the newest last, not
        evenly spaced); the lowest of each row is evicted (:mod:`adkit.compress.evict`). Default: :meth:`score`."""
        return self.score(h, k)

    def select(self, states, actions, rewards, next_states, attention=None, *,
               positions=None, generator=None, context: Tokens | None = None) -> Tensor:
        """-> ``(B, K)`` int64 indices into the n transitions, ascending per row."""
        if attention is None:
            attention = getattr(self, "_cached_attention", None)
        self._cached_attention = None  # used by (at most) this one call
        h = Transitions.build(type(self).__name__, states, actions, rewards, next_states,
                              attention, positions, generator, context)
        k = self.keep_count(h)
        if h.n <= k:
            return h.index().clone()
        return keep_top(self.score(h, k), k)

    def compress(self, states, actions, rewards, next_states, attention=None, *,
                 positions=None, generator=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (states, actions, rewards, next_states) cut to the kept transitions, chronological,
        each ``(B, K, *)`` with its own trailing dimensions."""
        idx = self.select(states, actions, rewards, next_states, attention,
                          positions=positions, generator=generator)
        if idx.shape[1] == actions.shape[1]:
            return states, actions, rewards, next_states
        return gather(idx, states, actions, rewards, next_states)


@strategy()
class NoCompressor(Compressor):
    """Baseline: keeps every transition (the budget is ignored)."""

    budget: int | None = None

    def __post_init__(self):
        pass

    def keep_count(self, h):
        return h.n


@strategy("keep_recent")
class RecencyCompressor(Compressor):
    """The last ``keep_recent`` transitions."""

    budget: int

    def score(self, h, k):
        return h.index()


@strategy("target_length")
class UniformCompressor(Compressor):
    """K evenly spaced transitions spanning the history; always includes the most
    recent, and the first when K > 1 (``round(linspace(n-1, 0, K))``)."""

    budget: int

    def score(self, h, k):
        return uniform_scores(h, k)

    def evict_score(self, h, k):
        """Uniform stride as eviction: the entry whose removal leaves the smallest gap between its
        neighbours goes; the oldest and the newest stay."""
        gap = torch.full_like(h.reward, math.inf)  # (B, n)
        gap[:, 1:-1] = (h.positions[:, 2:] - h.positions[:, :-2]).float()
        return gap


@strategy("target_length")
class AttentionBasedCompressor(Compressor):
    """The top-K transitions by the query row's attention."""

    budget: int
    needs_attention = True
    evict_sets = "layer"  # one per layer, the heads' mean (TOVA)
    evict_fields = ()  # attention and order only

    def score(self, h, k):
        return h.need_scores()


@strategy("max_keep")
class ThresholdCompressor(Compressor):
    """Transitions with attention >= ``threshold``, their count clamped to
    ``[min_keep, max_keep]``. The count varies per row but a batch gets ONE length:
    the largest clamped count over rows; rows with fewer above threshold are filled
    with their next-highest transitions (real ones, never padding)."""

    threshold: float = 0.02
    min_keep: int = 1
    budget: int = 64
    needs_attention = True

    def __post_init__(self):
        super().__post_init__()
        _check(0 < self.threshold <= 1, f"threshold must lie in (0, 1], got {self.threshold!r}")
        _count(self.min_keep, "min_keep")
        _check(self.min_keep <= self.budget, f"min_keep ({self.min_keep}) must not exceed max_keep ({self.budget})")

    def keep_count(self, h):
        if h.n <= self.min_keep:
            return self.min_keep
        above = (h.need_scores() >= self.threshold).sum(-1)  # (B,)
        return int(above.clamp(self.min_keep, self.budget).max())

    def score(self, h, k):
        return h.need_scores()


@strategy("target_length")
class AdaptiveCompressor(Compressor):
    """Per row, picks recency, uniform or attention from that row's attention
    (requires attention; it raises ValueError without it): recent/distant ratio
    (means over the last / first ``max(1, n // 4)``) > ``ratio_threshold`` ->
    recency; else normalised entropy (entropy / ln n of the renormalised scores)
    > ``entropy_threshold`` -> uniform; else attention."""

    budget: int
    ratio_threshold: float = 2.0
    entropy_threshold: float = 0.9
    needs_attention = True
    evict_sets = "layer"  # one per layer, the heads' mean (TOVA)
    evict_fields = ()  # attention and order only
    MODES: ClassVar[tuple[str, ...]] = ("recency", "uniform", "attention")

    def __post_init__(self):
        super().__post_init__()
        _check(self.ratio_threshold > 0, f"ratio_threshold must be > 0, got {self.ratio_threshold!r}")
        _check(0 < self.entropy_threshold <= 1,
               f"entropy_threshold must lie in (0, 1], got {self.entropy_threshold!r}")

    def modes(self, scores: Tensor) -> Tensor:
        """``(B, n)`` scores -> ``(B,)`` index into ``MODES`` per row."""
        q = max(1, scores.shape[1] // 4)
        ratio = scores[:, -q:].mean(-1) / (scores[:, :q].mean(-1) + 1e-10)
        p = scores.clamp_min(0)
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-10)
        entropy = -(p * (p + 1e-10).log()).sum(-1) / math.log(scores.shape[1])
        return torch.where(ratio > self.ratio_threshold, 0, torch.where(entropy > self.entropy_threshold, 1, 2))

    def score(self, h, k):
        s = h.need_scores()
        options = torch.stack([h.index().float(), uniform_scores(h, k), s])  # (3, B, n) in MODES order
        return options[self.modes(s), torch.arange(s.shape[0])]  # (B, n)


@strategy("target_length")
class RandomCompressor(Compressor):
    """Baseline: a uniformly random subset of K per row. Randomness comes from the
    call's ``generator``, else from a fresh one seeded with ``seed`` (so without a
    generator the compressor is a pure function of its inputs)."""

    budget: int
    seed: int = 0

    def score(self, h, k):
        return gumbel_scores(h, self.seed)


@strategy("target_length")
class ExponentialDecayCompressor(Compressor):
    """Samples K transitions per row without replacement with probability
    ∝ ``exp(-decay_rate * age)`` (age = transitions since, newest 0), rows independently."""

    budget: int
    decay_rate: float = 0.1
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        _check(self.decay_rate > 0, f"decay_rate must be > 0, got {self.decay_rate!r}")

    def score(self, h, k):
        age = h.positions[:, -1:] - h.positions  # (B, n) steps before the newest
        return -self.decay_rate * age + gumbel_scores(h, self.seed)


@strategy("target_length")
class SinkRecentCompressor(Compressor):
    """StreamingLLM: the first ``min(n_sink, K - 1)`` transitions (attention sinks) +
    the most recent (so at least the newest is always kept)."""

    budget: int
    n_sink: int = 4

    def __post_init__(self):
        super().__post_init__()
        self.n_sink = _count(self.n_sink, "n_sink", low=0)

    def score(self, h, k):
        i = h.index()
        return i + h.n * (i < min(self.n_sink, k - 1))


@strategy("target_length")
class HeavyHitterCompressor(Compressor):
    """H2O: a recent window of ``round(K * recent_ratio)`` + heavy hitters by
    accumulated attention (column sums of the pattern over all query rows, or the
    scores when ``(B, n)`` is given)."""

    budget: int
    recent_ratio: float = 0.5
    needs_attention = True
    evict_sets = "head"  # one per layer and head
    evict_fields = ()  # attention and order only
    evict_attention = "accumulated"

    def __post_init__(self):
        super().__post_init__()
        _check(0 <= self.recent_ratio <= 1, f"recent_ratio must lie in [0, 1], got {self.recent_ratio!r}")

    def score(self, h, k):
        acc = h.pattern[:, :, :h.n].sum(1) if h.pattern is not None else h.need_scores()  # (B, n)
        return acc.masked_fill(h.index() >= h.n - round(k * self.recent_ratio), math.inf)


@strategy("target_length")
class SnapKVCompressor(Compressor):
    """SnapKV: mean attention from the last ``window`` query rows of the pattern,
    max-pooled along keys (odd kernel ``pool``), top-K. The transitions inside the
    observation window (the last ``window - 1``; the last row is the query) are
    always kept (the most recent of them if they exceed K). Scores ``(B, n)`` given instead of a
    pattern are that window's mean attention (what an evicting cache gives: the mean of its last
    ``window`` decisions)."""

    budget: int
    window: int = 8
    pool: int = 3
    needs_attention = True
    evict_sets = "head"  # one per layer and head
    evict_fields = ()  # attention and order only
    evict_attention = "window"

    def __post_init__(self):
        super().__post_init__()
        _count(self.window, "window")
        _check(_count(self.pool, "pool") % 2 == 1, f"pool must be odd, got {self.pool}")

    def score(self, h, k):
        obs = h.pattern[:, -self.window:, :h.n].mean(1) if h.pattern is not None else h.need_scores()  # (B, n)
        pooled = F.max_pool1d(obs[:, None], self.pool, stride=1, padding=self.pool // 2)[:, 0]  # (B, 1, n) -> (B, n)
        return pooled.masked_fill(h.index() >= h.n - (self.window - 1), math.inf)


@strategy("target_length")
class RewardRecentCompressor(Compressor):
    """All rewarded transitions (reward > 0; the most recent if too many), filled with the most recent."""

    budget: int

    def score(self, h, k):
        return h.index() + h.n * (h.reward > 0)


@strategy("target_length")
class BestEpisodeCompressor(Compressor):
    """The highest-return complete episode in the context (all ``horizon`` steps
    present, not the current one; the most recent on ties) + the current (latest,
    possibly partial) episode; trimmed / filled by recency. Episode =
    ``positions // horizon``."""

    budget: int
    horizon: int

    def __post_init__(self):
        super().__post_init__()
        self.horizon = _count(self.horizon, "horizon")

    def score(self, h, k):
        ep = h.positions // self.horizon
        ep = ep - ep.min(-1, keepdim=True).values  # (B, n) episode 0..E-1 within the row
        E = int(ep.max()) + 1
        returns = torch.zeros(ep.shape[0], E, device=ep.device).scatter_add_(1, ep, h.reward)  # (B, E)
        counts = torch.zeros_like(returns).scatter_add_(1, ep, torch.ones_like(returns[:, :1]).expand_as(ep))
        current = ep[:, -1:]  # (B, 1)
        complete = (counts == self.horizon) & (torch.arange(E, device=ep.device) != current)  # (B, E)
        best = E - 1 - returns.masked_fill(~complete, -math.inf).flip(-1).argmax(-1, keepdim=True)  # (B, 1)
        keep = (ep == current) | ((ep == best) & complete.any(-1, keepdim=True))
        return h.index() + h.n * keep


@strategy("target_length")
class OracleCompressor(Compressor):
    """Greedy leave-one-out upper bound. ``policy(h, keep)`` is given the batch ``h``
    (:class:`Transitions`, B rows) and kept indices ``keep`` ``(B * r, m)`` (each row of
    ``h`` repeated ``r`` times in place) and returns the action logits ``(B * r, A)`` of the
    decision after each kept context. From the full context, drop one transition at a
    time, the one whose removal least increases KL(full-context policy || compressed
    policy), until K remain. Each step evaluates every candidate removal of every row as
    one batch (B * m rows); cost: n - K policy calls, O(n^2 B) rows in all."""

    budget: int
    policy: Callable[[Transitions, Tensor], Tensor]

    def __post_init__(self):
        super().__post_init__()
        _check(callable(self.policy), f"policy must be callable, got {type(self.policy).__name__}")

    def score(self, h, k):
        keep = h.index().clone()  # (B, m), m = n at first
        B, n = keep.shape
        full = F.log_softmax(self.policy(h, keep).float(), -1)  # (B, A)
        removed_at = torch.full((B, n), math.inf, device=keep.device)  # later removal = higher score
        for step in range(n - k):
            m = keep.shape[1]
            others = ~torch.eye(m, dtype=torch.bool, device=keep.device)  # (m, m): row j drops j
            cand = keep[:, None, :].expand(B, m, m)[:, others].view(B, m, m - 1)  # (B, m, m-1)
            logp = F.log_softmax(self.policy(h, cand.reshape(B * m, m - 1)).float(), -1)  # (B * m, A)
            ref = full.repeat_interleave(m, 0)  # (B * m, A)
            kl = (ref.exp() * (ref - logp)).sum(-1).view(B, m)  # (B * m,) -> (B, m)
            drop = kl.argmin(-1)  # (B,)
            removed_at.scatter_(1, keep.gather(1, drop[:, None]), float(step))
            keep = cand[torch.arange(B), drop]  # (B, m-1)
        return removed_at


RULES = ("sink", "recent", "rewarded", "heavy", "full")


def rule_compressor(budget: int, rule: str, size: int | None = None) -> Compressor:
    """The strategy a per-head profile rule stands for, keeping ``budget``: ``sink`` ->
    SinkRecent (``n_sink = size``, default 4), ``recent`` -> Recency, ``rewarded`` ->
    RewardRecent, ``heavy`` -> H2O with ``size`` heavy hitters (default half the budget),
    ``full`` (the heads need everything) -> H2O with half the budget on heavy hitters."""
    _check(rule in RULES, f"rule must be one of {RULES}, got {rule!r}")
    if rule == "sink":
        return SinkRecentCompressor(budget, 4 if size is None else size)
    if rule == "recent":
        return RecencyCompressor(budget)
    if rule == "rewarded":
        return RewardRecentCompressor(budget)
    heavy = None if rule == "full" else size
    return HeavyHitterCompressor(budget, 0.5 if heavy is None else 1 - min(heavy, budget) / budget)


@strategy("target_length")
class ProfileCompressor(Compressor):
    """A keep-rule from a per-head attention profile (``adkit.analysis.metrics.head_profile``),
    composed of the strategy the rule stands for (:func:`rule_compressor`): the budget
    binds whatever the rule."""

    budget: int
    rule: str
    size: int | None = None
    inner: Compressor = field(init=False, repr=False)
    RULES: ClassVar[tuple[str, ...]] = RULES

    def __post_init__(self):
        super().__post_init__()
        self.size = None if self.size is None else _count(self.size, "size", low=0)
        self.inner = rule_compressor(self.budget, self.rule, self.size)
        self.needs_attention, self.evict_attention = self.inner.needs_attention, self.inner.evict_attention
        self.evict_fields, self.evict_sets = self.inner.evict_fields, self.inner.evict_sets

    def keep_count(self, h):
        return self.inner.keep_count(h)

    def score(self, h, k):
        return self.inner.score(h, k)

    def evict_score(self, h, k):
        return self.inner.evict_score(h, k)

    @classmethod
    def from_profile(cls, records, budget: int) -> ProfileCompressor:
        """The most common rule across head records (dicts or objects with ``rule`` and
        ``size``; first seen wins ties), with the median size of the heads that have it."""
        value = lambda r, name: r[name] if isinstance(r, Mapping) else getattr(r, name)  # noqa: E731
        rules = [value(r, "rule") for r in records]
        _check(len(rules) > 0, "from_profile needs at least one head record")
        rule = Counter(rules).most_common(1)[0][0]
        sizes = sorted(int(value(r, "size")) for r in records
                       if value(r, "rule") == rule and value(r, "size") is not None)
        return cls(budget, rule, sizes[len(sizes) // 2] if sizes else None)


COMPRESSORS: dict[str, type[Compressor]] = {
    "none": NoCompressor, "full": NoCompressor, "recency": RecencyCompressor, "uniform": UniformCompressor,
    "attention": AttentionBasedCompressor, "threshold": ThresholdCompressor, "adaptive": AdaptiveCompressor,
    "exponential": ExponentialDecayCompressor, "sink-recent": SinkRecentCompressor,
    "h2o": HeavyHitterCompressor, "snapkv": SnapKVCompressor, "reward-recent": RewardRecentCompressor,
    "best-episode": BestEpisodeCompressor, "profile": ProfileCompressor, "random": RandomCompressor,
    "oracle": OracleCompressor,
}


def name_of(compressor: Compressor) -> str:
    """The registry name of ``compressor``'s strategy (``none`` for the no-compression baseline)."""
    return next(name for name, cls in COMPRESSORS.items() if type(compressor) is cls)


def make(name: str, budget: int, **kw) -> Compressor:
    """Build a compressor by short name keeping ``budget`` transitions (for
    ``threshold`` the budget is ``max_keep``); ``kw`` go to the constructor."""
    _check(name in COMPRESSORS, f"unknown compressor {name!r}; known: {', '.join(COMPRESSORS)}")
    return COMPRESSORS[name](budget=budget, **kw)


def demo(n: int = 50, budget: int = 10, batch: int = 4, n_actions: int = 5, seed: int = 0) -> None:
    """The original toolkit's compressor demo: dummy histories in its shapes (states ``(B, n, 2)``,
    one-hot actions ``(B, n, A)``, rewards ``(B, n, 1)``), each strategy's report (original and
    compressed length, ratio, memory reduction) and what it keeps of row 0."""
    g = torch.Generator().manual_seed(seed)
    T = n + 1
    states = torch.randint(0, 9, (batch, n, 2), generator=g)  # (B, n, 2) grid positions
    next_states = torch.randint(0, 9, (batch, n, 2), generator=g)
    actions = F.one_hot(torch.randint(0, n_actions, (batch, n), generator=g), n_actions).float()  # (B, n, A)
    rewards = (torch.rand(batch, n, 1, generator=g) < 0.2).float()  # (B, n, 1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    logits = torch.randn(batch, 4, T, T, generator=g).mul(2).masked_fill(~causal, -math.inf)  # (B, H, T, T)
    pattern = logits.softmax(-1)

    def policy(h: Transitions, keep: Tensor) -> Tensor:  # logits that grow with the reward kept
        reward = h.reward.repeat_interleave(keep.shape[0] // h.reward.shape[0], 0)  # (B * r, n)
        return gather(keep, reward)[0].mean(1, keepdim=True) * torch.arange(3.0)  # (B * r, 3)

    extra = {"best-episode": {"horizon": 10}, "profile": {"rule": "heavy"}, "snapkv": {"window": 4},
             "oracle": {"policy": policy}, "threshold": {"threshold": 0.03, "min_keep": 2}}
    tensors = (states, actions, rewards, next_states)
    size = sum(t.numel() * t.element_size() for t in tensors)
    print(f"dummy histories: {batch} rows x {n} transitions (states {tuple(states.shape)}, one-hot actions "
          f"{tuple(actions.shape)}, rewards {tuple(rewards.shape)}), budget {budget}")
    for name, cls in COMPRESSORS.items():
        c = make(name, budget, **extra.get(name, {}))
        if c.needs_attention:
            c.cache_attention(pattern)  # the original's call; attention=pattern does the same
        kept = c.compress(*tensors)
        after = sum(t.numel() * t.element_size() for t in kept)
        print(f"\n{cls.__name__} ({name})")
        print(f"  Original length: {n}")
        print(f"  Compressed length: {kept[1].shape[1]}")
        print(f"  Compression ratio: {kept[1].shape[1] / n:.2f}")
        print(f"  Memory reduction: {1 - after / size:.1%}")
        if kept[1].shape[1] < n:
            print(f"  kept of row 0: {c.select(*tensors, attention=pattern)[0].tolist()}")


__all__ = ["COMPRESSORS", "RULES", "Compressor", "Transitions", "gather", "keep_top", "make", "name_of", "demo",
           "rule_compressor",
           *(c.__name__ for c in dict.fromkeys(COMPRESSORS.values()))]
