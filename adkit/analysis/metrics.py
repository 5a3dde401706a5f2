"""Attention statistics for Algorithm Distillation patterns: numbers, not pictures.

Conventions. A *pattern* is a softmax attention matrix ``(..., T, T)`` (rows are
queries, columns keys). Statistics read its *query row* ``pattern[..., -1, :]``:
keys ``0 .. T-2`` are the context (one per transition, oldest first) and key
``T-1`` is the query token itself. Inputs may be torch tensors (any dtype or
device) or numpy arrays; results are float64 numpy arrays or Python numbers.

* ``attention_stats`` keeps the original toolkit's metrics, names and meanings
  (``STAT_KEYS``); ``batched_attention_stats`` computes them for any ``(..., T, T)``.
* Length-aware additions take query rows ``(..., T)``: ``normalized_entropy``,
  ``mean_attention_distance``, ``sink_mass``, ``episode_mass``, ``rewarded_mass``, ``event_mass`` (on
  ``information_events``: rewards, Key-to-Door's key and door).
* Across layers and heads: ``attention_rollout``, ``head_profile``, ``stats_table``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adkit.compress.strategies import RULES  # head_profile's rules, cheapest first

ArrayLike = np.ndarray | torch.Tensor

EPS = 1e-10  # the original toolkit's guard in the entropy and the recent/distant ratio
TOL = 1e-9  # float slack when comparing a recovered mass with head_profile's target
STAT_KEYS = (
    "mean_context_attention",
    "std_context_attention",
    "max_context_attention",
    "max_context_position",
    "attention_to_query",
    "recent_attention",
    "distant_attention",
    "recent_to_distant_ratio",
    "attention_entropy",
)


def _numpy(x: ArrayLike) -> np.ndarray:
    """Torch tensor or array-like -> float64 numpy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _check_pattern(shape: tuple, caller: str, layouts: dict[int, str] | None) -> None:
    """Raise ValueError unless ``shape`` is one of ``layouts`` (ndim -> name), square, T >= 2."""
    expected = " or ".join(layouts.values()) if layouts else "(..., T, T)"
    if len(shape) < 2 or (layouts is not None and len(shape) not in layouts):
        raise ValueError(f"{caller} expects a pattern of shape {expected}, got shape {shape}")
    if shape[-1] != shape[-2]:
        raise ValueError(f"{caller}: a pattern's last two dims must be square (T, T), got shape {shape}")
    if shape[-1] < 2:
        raise ValueError(f"{caller}: need T >= 2 (a context key before the query), got shape {shape}")


def _query_rows(weights: ArrayLike, caller: str, layouts: dict[int, str] | None = None) -> np.ndarray:
    """Check a pattern ``(..., T, T)`` and return its query rows ``(..., T)`` as float64.

    Only the last row is converted, so a large float32 or GPU pattern is never copied whole.
    """
    if not isinstance(weights, torch.Tensor):
        weights = np.asarray(weights)
    _check_pattern(tuple(weights.shape), caller, layouts)
    return _numpy(weights[..., -1, :])


def _rows(row: ArrayLike, caller: str) -> np.ndarray:
    """Check query rows ``(..., T)`` with T >= 2 and return them as float64."""
    rows = _numpy(row)
    if rows.ndim < 1 or rows.shape[-1] < 2:
        raise ValueError(f"{caller} expects query rows (..., T) with T >= 2, got shape {rows.shape}")
    return rows


def _normalise(x: np.ndarray) -> np.ndarray:
    """Divide by the sum over the last axis; all-zero rows stay zero."""
    total = x.sum(-1, keepdims=True)
    return x / np.where(total > 0, total, 1.0)


def _stats(rows: np.ndarray, n_context: int | None, caller: str) -> dict[str, np.ndarray]:
    """The ``STAT_KEYS`` metrics of query rows ``(..., T)``, each of shape ``(...)``."""
    T = rows.shape[-1]
    n = T - 1 if n_context is None else n_context
    if not 1 <= n <= T - 1:
        raise ValueError(f"{caller}: n_context must be in 1..{T - 1} for T={T}, got {n_context}")
    ctx = rows[..., T - 1 - n : T - 1]  # (..., n): the n keys just before the query
    k = max(1, n // 4)
    recent, distant = ctx[..., -k:].mean(-1), ctx[..., :k].mean(-1)
    return {
        "mean_context_attention": ctx.mean(-1),
        "std_context_attention": ctx.std(-1),
        "max_context_attention": ctx.max(-1),
        "max_context_position": ctx.argmax(-1),
        "attention_to_query": rows[..., -1],
        "recent_attention": recent,
        "distant_attention": distant,
        "recent_to_distant_ratio": recent / (distant + EPS),
        "attention_entropy": -(ctx * np.log(ctx + EPS)).sum(-1),
    }


def batched_attention_stats(weights: ArrayLike, n_context: int | None = None) -> dict[str, np.ndarray]:
    """``attention_stats`` for patterns ``(..., T, T)``: every value a numpy array of shape ``(...)``."""
    return _stats(_query_rows(weights, "batched_attention_stats"), n_context, "batched_attention_stats")


def attention_stats(weights: ArrayLike, n_context: int | None = None) -> dict:
    """The original toolkit's metrics of a pattern's query row (last row).

    Args:
        weights: head-averaged pattern ``(T, T)`` or per-head ``(H, T, T)``, torch or numpy.
        n_context: number of context keys, those just before the query
            (keys ``T-1-n_context .. T-2``); default ``T-1``, all earlier keys.

    Returns a dict over ``STAT_KEYS``: Python floats (``max_context_position`` an int)
    for ``(T, T)``; numpy arrays of shape ``(H,)`` for ``(H, T, T)``. With ``a`` the
    context weights, ``n = n_context``, ``k = max(1, n // 4)``:
    ``mean_context_attention`` = mean(a), ``std_context_attention`` = std(a) (ddof=0),
    ``max_context_attention`` = max(a) at ``max_context_position`` (0..n-1 within the
    context, the key index when n = T-1), ``attention_to_query`` = weight on key T-1,
    ``recent_attention`` / ``distant_attention`` = mean of the last / first k of a,
    ``recent_to_distant_ratio`` = recent / (distant + 1e-10),
    ``attention_entropy`` = -sum a ln(a + 1e-10) (``a`` not renormalised).
    Batches of patterns: ``batched_attention_stats``.
    """
    rows = _query_rows(weights, "attention_stats", {2: "(T, T)", 3: "(H, T, T)"})
    stats = _stats(rows, n_context, "attention_stats")
    return {key: value.item() for key, value in stats.items()} if rows.ndim == 1 else stats


def normalized_entropy(row: ArrayLike) -> np.ndarray:
    """Entropy of the renormalised context distribution over ln(n_context), in [0, 1].

    With ``p = a / sum(a)`` over the ``n = T-1`` context keys of query rows ``(..., T)``:
    ``-sum p ln p / ln n``, 1 for uniform context attention, 0 for one key (and for
    n = 1 or a row with no context mass). Returns ``(...)``. The toolkit's fixed
    thresholds on ``attention_entropy`` (peaked < 1.5, uniform > 2.0) depend on the
    context length: uniform attention over 4 keys gives at most ln 4 = 1.39 ("peaked"),
    over 79 keys ln 79 = 4.37, so a threshold on this [0, 1] scale is comparable
    across lengths.
    """
    ctx = _rows(row, "normalized_entropy")[..., :-1]  # (..., n)
    p = _normalise(ctx)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    n = ctx.shape[-1]
    return entropy / np.log(n) if n > 1 else np.zeros_like(entropy)


def mean_attention_distance(row: ArrayLike, normalize: bool = False) -> np.ndarray:
    """Expected distance back from the query: ``sum_j a_j (T-1-j)`` over all T keys.

    Query rows ``(..., T)`` -> ``(...)``, in steps (the query itself is at distance 0).
    ``normalize=True`` divides by T-1, the farthest key, so 1 means "all on key 0".
    """
    rows = _rows(row, "mean_attention_distance")
    T = rows.shape[-1]
    distance = np.arange(T - 1, -1, -1, dtype=np.float64)  # (T,): key j is T-1-j steps back
    return rows @ distance / (T - 1 if normalize else 1)


def sink_mass(row: ArrayLike) -> np.ndarray:
    """Mass on key 0, the first token (an "attention sink"): query rows ``(..., T)`` -> ``(...)``."""
    return _rows(row, "sink_mass")[..., 0]


def episode_mass(row: ArrayLike, episode_ids: Sequence[int]) -> np.ndarray:
    """Attention mass per episode of the context.

    Args:
        row: query rows ``(..., T)``.
        episode_ids: ``(T-1,)`` episode of each context key, e.g. ``position // horizon``.

    Returns ``(..., E)``: ``sum_{j: id_j = e} a_j`` for each distinct id ``e``, ordered
    by first appearance in the context (oldest to newest). The query key is excluded.
    """
    rows = _rows(row, "episode_mass")
    ids = np.asarray(episode_ids)
    if ids.shape != (rows.shape[-1] - 1,):
        raise ValueError(f"episode_mass: episode_ids must have shape ({rows.shape[-1] - 1},), got {ids.shape}")
    _, first = np.unique(ids, return_index=True)
    episodes = ids[np.sort(first)]  # (E,) distinct ids, oldest first
    membership = (ids[:, None] == episodes[None, :]).astype(np.float64)  # (T-1, E)
    return rows[..., :-1] @ membership


def rewarded_mass(row: ArrayLike, rewards: ArrayLike) -> np.ndarray:
    """Mass on context keys whose transition had reward > 0: ``sum_{j: r_j > 0} a_j``.

    ``row`` is ``(..., T)``; ``rewards`` is ``(..., T-1)`` (one per context key,
    broadcast against the rows' leading dims). Returns ``(...)``.
    """
    rows, r = _rows(row, "rewarded_mass"), _numpy(rewards)
    if r.shape[-1:] != (rows.shape[-1] - 1,):
        raise ValueError(f"rewarded_mass: rewards need a last dim of {rows.shape[-1] - 1}, got shape {r.shape}")
    return (rows[..., :-1] * (r > 0)).sum(-1)


def information_events(env: str, rewards: ArrayLike, step: ArrayLike) -> dict[str, np.ndarray]:
    """The context transitions that carry a task's information, by kind: masks ``(..., n)``.

    Every family: ``reward`` (reward > 0). Key-to-Door adds ``key`` (the first reward of an
    episode) and ``door`` (the second), where the context shows it: a reward in the oldest
    episode, cut by the window, with no earlier reward in view, could be either and counts
    as ``reward`` only. ``rewards``, ``step`` (step within the episode): ``(..., n)``.
    """
    paid, step = _numpy(rewards) > 0, np.asarray(step)
    events = {"reward": paid}
    if env != "key-to-door":
        return events
    before = np.cumsum(paid, -1) - paid  # rewards earlier in the context
    first = step == 0  # episode starts; the context's first token counts as one (a cut episode)
    first[..., 0] = True
    base = np.maximum.accumulate(np.where(first, before, 0), axis=-1)  # rewards before this episode's first token
    nth = before - base  # rewards earlier in the same episode, in view
    cut = np.cumsum(first, -1) == 1  # the oldest episode in view
    whole = ~cut | (step[..., :1] == 0)  # its start is in view
    events["key"] = paid & (nth == 0) & whole
    events["door"] = paid & (nth == 1)  # an episode pays at most twice: a second reward is the door
    return events


def event_mass(row: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Mass of query rows ``(..., T)`` on the context keys in ``mask (..., T-1)``: ``(...)``."""
    rows, m = _rows(row, "event_mass"), np.asarray(mask, bool)
    if m.shape[-1:] != (rows.shape[-1] - 1,):
        raise ValueError(f"event_mass: the mask needs a last dim of {rows.shape[-1] - 1}, got shape {m.shape}")
    return (rows[..., :-1] * m).sum(-1)


def attention_rollout(patterns: ArrayLike, add_residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each output attends to each input.

    ``patterns`` is ``(L, B, H, T, T)`` or ``(L, H, T, T)``. Per layer, heads are
    averaged, ``A' = 0.5 A + 0.5 I`` with ``add_residual`` (the skip connection),
    rows renormalised; the rollout is ``A'_{L-1} ... A'_1 A'_0``. Returns
    ``(B, T, T)`` or ``(T, T)``.
    """
    p = _numpy(patterns)
    _check_pattern(p.shape, "attention_rollout", {4: "(L, H, T, T)", 5: "(L, B, H, T, T)"})
    layers = p.mean(axis=-3)  # (L, [B,] T, T): heads averaged
    if add_residual:
        layers = 0.5 * layers + 0.5 * np.eye(p.shape[-1])
    layers = _normalise(layers)
    rollout = layers[0]
    for layer in layers[1:]:
        rollout = layer @ rollout  # ([B,] T, T): a later layer mixes the earlier rollout
    return rollout


@dataclass(frozen=True)
class HeadProfile:
    """The cheapest keep-rule that recovers the target attention mass of one head."""

    head: int
    rule: str  # one of RULES
    size: int  # context keys kept (transitions); the query is always kept on top
    mass: float  # fraction of the query row's mass (context + query) that the rule keeps


def _budgets(windows: Sequence[int] | None, n: int) -> np.ndarray:
    """Candidate sizes for "recent" / "heavy", ascending; sizes >= n (no compression) dropped."""
    if windows is None:
        return np.arange(1, n // 2 + 1)
    budgets = np.unique(np.asarray(windows, dtype=np.int64))
    if budgets.size == 0 or budgets[0] < 1:
        raise ValueError(f"head_profile: windows must be positive sizes, got {windows}")
    return budgets[budgets < n]


def head_profile(
    patterns: ArrayLike,
    rewards: ArrayLike | None = None,
    target: float = 0.95,
    windows: Sequence[int] | None = None,
) -> list[HeadProfile]:
    """Per head, the cheapest simple keep-rule that recovers ``target`` of the query row's mass.

    In the manner of FastGen (Ge et al., 2024). ``patterns`` is ``(H, T, T)`` or
    ``(B, H, T, T)``; with a batch the query rows are averaged over samples, so the
    rules are judged on the mean row. A rule keeps some context keys plus the query;
    it recovers ``(a_query + sum_kept a_j) / sum_all a_j``. Rules are tried in order
    of what they need to apply, first passing rule wins, smallest size within it:

    * ``"sink"``: key 0 (size 1);
    * ``"recent"``: the last w context keys, w the smallest budget that suffices;
    * ``"rewarded"``: keys whose transition had reward > 0 (only if ``rewards``
      ``(T-1,)`` or ``(B, T-1)`` are given; the mass is averaged over samples,
      the size is the largest count over samples);
    * ``"heavy"``: the top-k keys of the mean row, k the smallest budget that suffices;
    * ``"full"``: all ``n = T-1`` keys, when nothing within the budgets suffices.

    ``windows`` lists the budgets (context keys) for "recent" and "heavy"; default
    ``1 .. n // 2``. No rule may keep more than the largest budget. Returns one
    ``HeadProfile(head, rule, size, mass)`` per head; ``(rule, size)`` is a
    compressor's strategy and budget. For layers, call once per layer.
    """
    if not 0 < target <= 1:
        raise ValueError(f"head_profile: target must be in (0, 1], got {target}")
    rows = _query_rows(patterns, "head_profile", {3: "(H, T, T)", 4: "(B, H, T, T)"})
    rows = rows.reshape(-1, *rows.shape[-2:])  # (B, H, T); B = 1 for (H, T, T)
    n = rows.shape[-1] - 1
    budgets = _budgets(windows, n)
    cap = budgets.max(initial=0)
    mean = rows.mean(0)  # (H, T): query rows averaged over the batch
    total, query, ctx = mean.sum(-1, keepdims=True), mean[:, -1:], mean[:, :-1]  # (H, 1), (H, 1), (H, n)

    def recovered(kept: np.ndarray) -> np.ndarray:  # kept context mass (H, m) -> fraction (H, m)
        return (query + kept) / total

    recent = np.cumsum(ctx[:, ::-1], -1)  # (H, n): mass of the last w keys at w-1
    heavy = np.cumsum(-np.sort(-ctx, -1), -1)  # (H, n): mass of the top k keys at k-1
    options = {  # rule -> (fractions recovered (H, m), sizes (m,))
        "sink": (recovered(ctx[:, :1]), np.array([1])),
        "recent": (recovered(recent[:, budgets - 1]), budgets),
    }
    if rewards is not None:
        r = _numpy(rewards)
        if r.ndim not in (1, 2) or (r.ndim == 2 and r.shape[0] != rows.shape[0]):
            raise ValueError(f"head_profile: rewards must be (T-1,) or (B, T-1), got shape {r.shape}")
        kept = rewarded_mass(rows, r[..., None, :]).mean(0)  # (B, H) -> (H,)
        options["rewarded"] = (recovered(kept[:, None]), np.array([int((r > 0).sum(-1).max())]))
    options["heavy"] = (recovered(heavy[:, budgets - 1]), budgets)

    profiles = []
    for head in range(mean.shape[0]):
        profile = HeadProfile(head, "full", n, 1.0)
        for rule, (fractions, sizes) in options.items():
            passing = np.flatnonzero((fractions[head] >= target - TOL) & (sizes <= cap))
            if passing.size:
                i = passing[0]
                profile = HeadProfile(head, rule, int(sizes[i]), float(fractions[head, i]))
                break
        profiles.append(profile)
    return profiles


def stats_table(patterns: ArrayLike) -> list[dict]:
    """One row per (layer, sample, head) for layer x head grids, without pandas.

    ``patterns`` is ``(L, B, H, T, T)``. Each row holds ``layer``, ``sample``, ``head``,
    every ``STAT_KEYS`` metric, ``normalized_entropy``, ``mean_attention_distance``
    (in steps) and ``sink_mass``, as Python numbers, layer-major. Vectorised over all
    rows; ``pandas.DataFrame(stats_table(p))`` gives a frame.
    """
    rows = _query_rows(patterns, "stats_table", {5: "(L, B, H, T, T)"})  # (L, B, H, T)
    columns = _stats(rows, None, "stats_table")
    columns["normalized_entropy"] = normalized_entropy(rows)
    columns["mean_attention_distance"] = mean_attention_distance(rows)
    columns["sink_mass"] = sink_mass(rows)
    index = np.indices(rows.shape[:-1]).reshape(3, -1)  # (3, L*B*H): layer, sample, head
    names = ("layer", "sample", "head", *columns)
    values = [*index.tolist(), *(column.reshape(-1).tolist() for column in columns.values())]
    return [dict(zip(names, entry)) for entry in zip(*values)]


__all__ = ["EPS", "RULES", "STAT_KEYS", "HeadProfile", "attention_rollout", "attention_stats",
           "batched_attention_stats", "episode_mass", "event_mass", "head_profile", "information_events",
           "mean_attention_distance", "normalized_entropy", "rewarded_mass", "sink_mass", "stats_table"]
