"""History compressors: keep K of the n context transitions of each row.

As in NVIDIA kvpress presses, a strategy only *scores* the n transitions of each
row (``score(h, k) -> (B, n)``); one shared step (``keep_top``) keeps the k best
per row, ties going to the more recent, in chronological order (``select``), and
``compress`` gathers the four transition tensors to them. A budget is always a
number of transitions kept. One code path serves retraining (training windows)
and training-free rollouts (the context of each decision).

>>> c = make("h2o", 16)
>>> s, a, r, s2 = c.compress(states, actions, rewards, next_states, attention=pattern)

Shapes: states / next_states ``(B, n, d)``, actions ``(B, n)`` int64, rewards
``(B, n)`` float, positions ``(B, n)`` int64 (absolute step in the learning
stream; default ``arange(n)``). ``attention``: scores ``(B, n)`` or a pattern
``(B, T, T)`` / ``(B, H, T, T)`` (heads averaged) whose last row scores the
``n = T - 1`` transitions; read on every call, never cached. Histories with
``n <= K`` come back unchanged (the same tensors), attention or not.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

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
    out = []
    for t in tensors:
        idx = indices.view(*indices.shape, *[1] * (t.dim() - 2))  # (B, K, 1, ...)
        out.append(t.gather(1, idx.expand(*indices.shape, *t.shape[2:])))  # (B, K, ...)
    return tuple(out)


def keep_top(scores: Tensor, k: int) -> Tensor:
    """The shared select step: ``(B, n)`` scores -> ``(B, k)`` indices of the top k, ascending.

    Ties are broken in favour of the more recent transition."""
    n = scores.shape[-1]
    order = torch.argsort(scores.flip(-1), dim=-1, descending=True, stable=True)  # (B, n), 0 = newest
    return (n - 1 - order[:, :k]).sort(dim=-1).values


@dataclass(frozen=True)
class History:
    """One validated batch of contexts, as strategies see it.

    ``scores`` ``(B, n)``: the query row's attention to each transition (heads
    averaged); ``pattern`` ``(B, T, T)``: the head-averaged pattern, when one was
    passed. ``owner`` names the compressor in error messages."""

    states: Tensor
    actions: Tensor
    rewards: Tensor
    next_states: Tensor
    positions: Tensor
    scores: Tensor | None
    pattern: Tensor | None
    generator: torch.Generator | None
    owner: str

    @property
    def n(self) -> int:
        return self.actions.shape[1]

    def index(self) -> Tensor:
        """``(B, n)`` transition index 0..n-1: the recency score (newest highest)."""
        return torch.arange(self.n, device=self.actions.device).expand_as(self.actions)

    def need_scores(self) -> Tensor:
        _check(self.scores is not None, f"{self.owner} needs attention: pass scores (B, n) "
               "or a pattern (B, T, T) / (B, H, T, T) with T = n + 1")
        return self.scores

    def need_pattern(self) -> Tensor:
        _check(self.pattern is not None, f"{self.owner} needs an attention pattern (B, T, T) or "
               "(B, H, T, T) with T = n + 1, not per-transition scores")
        return self.pattern

    @classmethod
    def build(cls, owner, states, actions, rewards, next_states, attention, positions, generator):
        B, n = actions.shape[0], actions.shape[-1]
        shapes = {k: tuple(v.shape) for k, v in
                  dict(states=states, actions=actions, rewards=rewards, next_states=next_states).items()}
        _check(actions.dim() == 2 and states.dim() == 3 and states.shape[:2] == (B, n)
               and rewards.shape == (B, n) and next_states.shape == states.shape,
               f"expected states/next_states (B, n, d) and actions/rewards (B, n), got {shapes}")
        positions = torch.arange(n) if positions is None else torch.as_tensor(positions)
        _check(tuple(positions.shape) in ((n,), (B, n)),
               f"positions of shape {tuple(positions.shape)} do not fit actions {(B, n)}")
        positions = positions.to(actions.device).long().expand(B, n)
        scores, pattern = _read_attention(attention, B, n, actions.device)
        return cls(states, actions, rewards, next_states, positions, scores, pattern, generator, owner)


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


class Compressor:
    """Base class: subclasses implement ``score``; ``budget`` says how many to keep."""

    budget_arg: ClassVar[str] = "target_length"  # the constructor argument that ``make`` sets
    needs_attention: ClassVar[bool] = False  # whether ``select`` must be given attention

    def __init__(self, target_length: int):
        self.target_length = _count(target_length, self.budget_arg)

    def budget(self, h: History) -> int:
        """Transitions to keep for this batch (one K per batch)."""
        return self.target_length

    def score(self, h: History, k: int) -> Tensor:
        """``(B, n)`` scores; the k highest of each row are kept."""
        raise NotImplementedError

    def select(self, states, actions, rewards, next_states, attention=None, *,
               positions=None, generator=None) -> Tensor:
        """-> ``(B, K)`` int64 indices into the n transitions, ascending per row."""
        h = History.build(type(self).__name__, states, actions, rewards, next_states,
                          attention, positions, generator)
        k = self.budget(h)
        if h.n <= k:
            return h.index().clone()
        return keep_top(self.score(h, k), k)

    def compress(self, states, actions, rewards, next_states, attention=None, *,
                 positions=None, generator=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (states, actions, rewards, next_states) cut to the kept transitions,
        chronological: ``(B, K, d)``, ``(B, K)``, ``(B, K)``, ``(B, K, d)``."""
        idx = self.select(states, actions, rewards, next_states, attention,
                          positions=positions, generator=generator)
        if idx.shape[1] == actions.shape[1]:
            return states, actions, rewards, next_states
        return gather(idx, states, actions, rewards, next_states)


class NoCompressor(Compressor):
    """Baseline: keeps every transition (the budget is ignored)."""

    def __init__(self, target_length: int | None = None):
        self.target_length = target_length

    def budget(self, h: History) -> int:
        return h.n


class RecencyCompressor(Compressor):
    """The last ``keep_recent`` transitions."""

    budget_arg = "keep_recent"

    def __init__(self, keep_recent: int):
        super().__init__(keep_recent)
        self.keep_recent = keep_recent

    def score(self, h, k):
        return h.index()


def _uniform_mask(n: int, k: int, device) -> Tensor:
    """``(n,)`` bool: k evenly spaced transitions from newest (n-1) back to the first (0)."""
    idx = torch.floor(torch.linspace(n - 1, 0, k, dtype=torch.float64) + 0.5).long()  # step >= 1: unique
    return torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, idx.to(device), True)


class UniformCompressor(Compressor):
    """K evenly spaced transitions spanning the history; always includes the most
    recent, and the first when K > 1 (``round(linspace(n-1, 0, K))``)."""

    def score(self, h, k):
        return _uniform_mask(h.n, k, h.actions.device).float().expand(h.actions.shape)


class AttentionBasedCompressor(Compressor):
    """The top-K transitions by the query row's attention."""

    needs_attention = True

    def score(self, h, k):
        return h.need_scores()


class ThresholdCompressor(Compressor):
    """Transitions with attention >= ``threshold``, their count clamped to
    ``[min_keep, max_keep]``. The count varies per row but a batch gets ONE length:
    the largest clamped count over rows; rows with fewer above threshold are filled
    with their next-highest transitions (real ones, never padding)."""

    needs_attention = True

    budget_arg = "max_keep"

    def __init__(self, threshold: float = 0.02, min_keep: int = 1, max_keep: int = 64):
        super().__init__(max_keep)
        _check(0 < threshold <= 1, f"threshold must lie in (0, 1], got {threshold!r}")
        _count(min_keep, "min_keep")
        _check(min_keep <= max_keep, f"min_keep ({min_keep}) must not exceed max_keep ({max_keep})")
        self.threshold, self.min_keep, self.max_keep = threshold, min_keep, max_keep

    def budget(self, h):
        if h.n <= self.min_keep:
            return self.min_keep
        above = (h.need_scores() >= self.threshold).sum(-1)  # (B,)
        return int(above.clamp(self.min_keep, self.max_keep).max())

    def score(self, h, k):
        return h.need_scores()


class AdaptiveCompressor(Compressor):
    """Per row, picks recency, uniform or attention from that row's attention
    (requires attention; it raises ValueError without it): recent/distant ratio
    (means over the last / first ``max(1, n // 4)``) > ``ratio_threshold`` ->
    recency; else normalised entropy (entropy / ln n of the renormalised scores)
    > ``entropy_threshold`` -> uniform; else attention."""

    needs_attention = True

    MODES = ("recency", "uniform", "attention")

    def __init__(self, target_length: int, ratio_threshold: float = 2.0, entropy_threshold: float = 0.9):
        super().__init__(target_length)
        _check(ratio_threshold > 0, f"ratio_threshold must be > 0, got {ratio_threshold!r}")
        _check(0 < entropy_threshold <= 1, f"entropy_threshold must lie in (0, 1], got {entropy_threshold!r}")
        self.ratio_threshold, self.entropy_threshold = ratio_threshold, entropy_threshold

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
        uniform = _uniform_mask(h.n, k, s.device).float().expand_as(s)
        options = torch.stack([h.index().float(), uniform, s])  # (3, B, n)
        return options[self.modes(s), torch.arange(s.shape[0])]  # (B, n)


class RandomCompressor(Compressor):
    """Baseline: a uniformly random subset of K per row. Randomness comes from the
    call's ``generator``, else from a fresh one seeded with ``seed`` (so without a
    generator the compressor is a pure function of its inputs)."""

    def __init__(self, target_length: int, seed: int = 0):
        super().__init__(target_length)
        self.seed = seed

    def score(self, h, k):
        """``(B, n)`` Gumbel noise: top-K of ``log w + gumbel`` samples K without replacement ∝ w."""
        g = h.generator if h.generator is not None else torch.Generator().manual_seed(self.seed)
        u = torch.rand(h.actions.shape, generator=g, device=g.device, dtype=torch.float64)
        return -(-u.clamp_min(1e-300).log()).log().to(h.actions.device)


class ExponentialDecayCompressor(RandomCompressor):
    """Samples K transitions per row without replacement with probability
    ∝ ``exp(-decay_rate * age)`` (age = transitions since, newest 0), rows independently."""

    def __init__(self, target_length: int, decay_rate: float = 0.1, seed: int = 0):
        super().__init__(target_length, seed)
        _check(decay_rate > 0, f"decay_rate must be > 0, got {decay_rate!r}")
        self.decay_rate = decay_rate

    def score(self, h, k):
        age = h.n - 1 - h.index()
        return -self.decay_rate * age + super().score(h, k)


class SinkRecentCompressor(Compressor):
    """StreamingLLM: the first ``min(n_sink, K - 1)`` transitions (attention sinks) +
    the most recent (so at least the newest is always kept)."""

    def __init__(self, target_length: int, n_sink: int = 4):
        super().__init__(target_length)
        self.n_sink = _count(n_sink, "n_sink", low=0)

    def score(self, h, k):
        i = h.index()
        return i + h.n * (i < min(self.n_sink, k - 1))


class HeavyHitterCompressor(Compressor):
    """H2O: a recent window of ``round(K * recent_ratio)`` + heavy hitters by
    accumulated attention (column sums of the pattern over all query rows, or the
    scores when ``(B, n)`` is given)."""

    needs_attention = True

    def __init__(self, target_length: int, recent_ratio: float = 0.5):
        super().__init__(target_length)
        _check(0 <= recent_ratio <= 1, f"recent_ratio must lie in [0, 1], got {recent_ratio!r}")
        self.recent_ratio = recent_ratio

    def score(self, h, k):
        acc = h.pattern[:, :, :h.n].sum(1) if h.pattern is not None else h.need_scores()  # (B, n)
        return acc.masked_fill(h.index() >= h.n - round(k * self.recent_ratio), math.inf)


class SnapKVCompressor(Compressor):
    """SnapKV: mean attention from the last ``window`` query rows of the pattern,
    max-pooled along keys (odd kernel ``pool``), top-K. The transitions inside the
    observation window (the last ``window - 1``; the last row is the query) are
    always kept (the most recent of them if they exceed K). Needs a pattern."""

    needs_attention = True

    def __init__(self, target_length: int, window: int = 8, pool: int = 3):
        super().__init__(target_length)
        _count(window, "window")
        _check(_count(pool, "pool") % 2 == 1, f"pool must be odd, got {pool}")
        self.window, self.pool = window, pool

    def score(self, h, k):
        obs = h.need_pattern()[:, -self.window:, :h.n].mean(1)  # (B, n)
        pooled = F.max_pool1d(obs[:, None], self.pool, stride=1, padding=self.pool // 2)[:, 0]  # (B, 1, n) -> (B, n)
        return pooled.masked_fill(h.index() >= h.n - (self.window - 1), math.inf)


class RewardRecentCompressor(Compressor):
    """All rewarded transitions (reward > 0; the most recent if too many), filled with the most recent."""

    def score(self, h, k):
        return h.index() + h.n * (h.rewards > 0)


class BestEpisodeCompressor(Compressor):
    """The highest-return complete episode in the context (all ``horizon`` steps
    present, not the current one; the most recent on ties) + the current (latest,
    possibly partial) episode; trimmed / filled by recency. Episode =
    ``positions // horizon``."""

    def __init__(self, target_length: int, horizon: int):
        super().__init__(target_length)
        self.horizon = _count(horizon, "horizon")

    def score(self, h, k):
        ep = h.positions // self.horizon
        ep = ep - ep.min(-1, keepdim=True).values  # (B, n) episode 0..E-1 within the row
        E = int(ep.max()) + 1
        returns = torch.zeros(ep.shape[0], E, device=ep.device).scatter_add_(1, ep, h.rewards.float())  # (B, E)
        counts = torch.zeros_like(returns).scatter_add_(1, ep, torch.ones_like(returns[:, :1]).expand_as(ep))
        current = ep[:, -1:]  # (B, 1)
        complete = (counts == self.horizon) & (torch.arange(E, device=ep.device) != current)  # (B, E)
        best = E - 1 - returns.masked_fill(~complete, -math.inf).flip(-1).argmax(-1, keepdim=True)  # (B, 1)
        keep = (ep == current) | ((ep == best) & complete.any(-1, keepdim=True))
        return h.index() + h.n * keep


class OracleCompressor(Compressor):
    """Greedy leave-one-out upper bound. ``policy(states, actions, rewards,
    next_states, keep_indices (B', m)) -> logits (B', A)`` gives the action logits of
    the decision after the kept context. From the full context, drop one
    transition at a time, the one whose removal least increases
    KL(full-context policy || compressed policy), until K remain. Each step
    evaluates every candidate removal of every row as one batch (B * m rows);
    cost: n - K policy calls, O(n^2 B) rows in all."""

    def __init__(self, target_length: int, policy: Callable[..., Tensor]):
        super().__init__(target_length)
        _check(callable(policy), f"policy must be callable, got {type(policy).__name__}")
        self.policy = policy

    def score(self, h, k):
        tensors = (h.states, h.actions, h.rewards, h.next_states)
        keep = h.index().clone()  # (B, m), m = n at first
        B, n = keep.shape
        full = F.log_softmax(self.policy(*tensors, keep).float(), -1)  # (B, A)
        removed_at = torch.full((B, n), math.inf, device=keep.device)  # later removal = higher score
        for step in range(n - k):
            m = keep.shape[1]
            others = ~torch.eye(m, dtype=torch.bool, device=keep.device)  # (m, m): row j drops j
            cand = keep[:, None, :].expand(B, m, m)[:, others].view(B, m, m - 1)  # (B, m, m-1)
            rep = [t.repeat_interleave(m, 0) for t in tensors]  # (B * m, n, ...)
            logp = F.log_softmax(self.policy(*rep, cand.reshape(B * m, m - 1)).float(), -1)  # (B * m, A)
            ref = full.repeat_interleave(m, 0)  # (B * m, A)
            kl = (ref.exp() * (ref - logp)).sum(-1).view(B, m)  # (B * m,) -> (B, m)
            drop = kl.argmin(-1)  # (B,)
            removed_at.scatter_(1, keep.gather(1, drop[:, None]), float(step))
            keep = cand[torch.arange(B), drop]  # (B, m-1)
        return removed_at


class ProfileCompressor(Compressor):
    """A keep-rule from a per-head attention profile (``adkit.metrics.head_profile``):
    ``sink`` -> SinkRecent (``n_sink = size``, default 4), ``recent`` -> Recency,
    ``rewarded`` -> RewardRecent, ``heavy`` -> H2O with ``size`` heavy hitters
    (default half the budget), ``full`` (the heads need everything) -> H2O with half
    the budget on heavy hitters: the budget binds whatever the rule."""

    RULES = ("sink", "recent", "rewarded", "heavy", "full")

    def __init__(self, target_length: int, rule: str, size: int | None = None):
        super().__init__(target_length)
        _check(rule in self.RULES, f"rule must be one of {self.RULES}, got {rule!r}")
        size = None if size is None else _count(size, "size", low=0)
        self.rule, self.size = rule, size
        k = target_length
        self._inner = {
            "sink": lambda: SinkRecentCompressor(k, 4 if size is None else size),
            "recent": lambda: RecencyCompressor(k),
            "rewarded": lambda: RewardRecentCompressor(k),
            "heavy": lambda: HeavyHitterCompressor(k, 0.5 if size is None else 1 - min(size, k) / k),
            "full": lambda: HeavyHitterCompressor(k, 0.5),
        }[rule]()
        self.needs_attention = self._inner.needs_attention

    def budget(self, h):
        return self._inner.budget(h)

    def score(self, h, k):
        return self._inner.score(h, k)

    @classmethod
    def from_profile(cls, records, target_length: int) -> ProfileCompressor:
        """The most common rule across head records (dicts or objects with ``rule`` and
        ``size``; first seen wins ties), with the median size of the heads that have it."""
        field = lambda r, name: r[name] if isinstance(r, Mapping) else getattr(r, name)  # noqa: E731
        rules = [field(r, "rule") for r in records]
        _check(len(rules) > 0, "from_profile needs at least one head record")
        rule = Counter(rules).most_common(1)[0][0]
        sizes = sorted(int(field(r, "size")) for r in records
                       if field(r, "rule") == rule and field(r, "size") is not None)
        return cls(target_length, rule, sizes[len(sizes) // 2] if sizes else None)


COMPRESSORS: dict[str, type[Compressor]] = {
    "none": NoCompressor, "full": NoCompressor, "recency": RecencyCompressor, "uniform": UniformCompressor,
    "attention": AttentionBasedCompressor, "threshold": ThresholdCompressor, "adaptive": AdaptiveCompressor,
    "exponential": ExponentialDecayCompressor, "sink-recent": SinkRecentCompressor,
    "h2o": HeavyHitterCompressor, "snapkv": SnapKVCompressor, "reward-recent": RewardRecentCompressor,
    "best-episode": BestEpisodeCompressor, "profile": ProfileCompressor, "random": RandomCompressor,
    "oracle": OracleCompressor,
}


def make(name: str, budget: int, **kw) -> Compressor:
    """Build a compressor by short name keeping ``budget`` transitions (for
    ``threshold`` the budget is ``max_keep``); ``kw`` go to the constructor."""
    _check(name in COMPRESSORS, f"unknown compressor {name!r}; known: {', '.join(COMPRESSORS)}")
    cls = COMPRESSORS[name]
    return cls(**{cls.budget_arg: budget}, **kw)


def demo(n: int = 20, budget: int = 6, seed: int = 0) -> None:
    """Print what each strategy keeps of row 0 of random dummy data."""
    g = torch.Generator().manual_seed(seed)
    B, H, T = 2, 4, n + 1
    states, next_states = torch.randn(B, n, 2, generator=g), torch.randn(B, n, 2, generator=g)
    actions = torch.randint(0, 5, (B, n), generator=g)
    rewards = (torch.rand(B, n, generator=g) < 0.2).float()
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    pattern = torch.randn(B, H, T, T, generator=g).mul(2).masked_fill(~causal, -math.inf).softmax(-1)  # (B, H, T, T)
    policy = lambda s, a, r, s2, keep: gather(keep, r)[0].mean(1, keepdim=True) * torch.arange(3.0)  # noqa: E731
    extra = {"best-episode": {"horizon": 5}, "profile": {"rule": "heavy"}, "snapkv": {"window": 4},
             "oracle": {"policy": policy}, "threshold": {"threshold": 0.06, "min_keep": 2}}
    print(f"{B} rows x {n} transitions, budget {budget}; kept indices of row 0:")
    for name in COMPRESSORS:
        kept = make(name, budget, **extra.get(name, {})).select(states, actions, rewards, next_states, pattern)
        print(f"  {name:<14} {kept[0].tolist()}")


__all__ = ["COMPRESSORS", "Compressor", "History", "gather", "keep_top", "make", "demo",
           *(c.__name__ for c in dict.fromkeys(COMPRESSORS.values()))]
