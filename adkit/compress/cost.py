"""What a decision or a training step costs: measured (wall-clock, peak memory) and counted (whole-forward FLOPs).

* :func:`time_ms`: median wall-clock of a call.
* :func:`peak_allocated_mb`: the most tensor memory a call held at once, from the
  allocation events ``torch.profiler`` records (no sampling).
* :func:`forward_flops`, :func:`scoring_flops` and :func:`decision_flops`: the whole work of a forward,
  of an attention-scored strategy's scoring pass and of a decision (projections, attention, MLP,
  head), counted from token counts.
* :func:`decision_cost`: one decision of a model, full (rolling cache or re-encoded) or compressed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch._C._profiler import _ExtraFields_Allocation
from torch.profiler import ProfilerActivity, profile

from adkit.compress.context import compressed_logits
from adkit.compress.strategies import Compressor
from adkit.config import ModelConfig
from adkit.data.tokens import STEP_INPUTS, Tokens


@contextlib.contextmanager
def _quiet_stderr():
    """Send C-level stderr (file descriptor 2) to /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocations(nodes):
    for node in nodes:
        if isinstance(node.extra_fields, _ExtraFields_Allocation):
            yield node
        yield from _allocations(node.children)


def peak_allocated_mb(fn: Callable[[], object]) -> float:
    """Peak net CPU tensor allocation (MB) during ``fn()``, above what was allocated before it.

    Every allocation (+bytes) and free (-bytes) that ``torch.profiler`` records with
    ``profile_memory=True`` is replayed in time order; the peak of the running sum is the
    most memory the call held at once. Frees of tensors made before the call count too.
    """
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto logs a line at start and stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = sorted(_allocations(prof.profiler.kineto_results.experimental_event_tree()),
                    key=lambda e: e.start_time_ns)
    running = itertools.accumulate(e.extra_fields.alloc_size for e in events)
    return max(0, max(running, default=0)) / 2**20


def time_ms(fn: Callable[[], object], budget_s: float = 1.0, max_calls: int = 7) -> float:
    """Median wall-clock (ms) of ``fn()``: one warm-up call, then as many as fit in ``budget_s``
    (at most ``max_calls``); a warm-up call longer than ``budget_s`` is the measurement."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > budget_s:
        return 1000 * first
    times: list[float] = []
    while len(times) < max_calls and sum(times) < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def forward_flops(cfg: ModelConfig, tokens: int, keys: int, n_actions: int) -> int:
    """FLOPs (2 per multiply-add) of one forward of the AD transformer over ``tokens`` new tokens, each
    attending to ``keys`` keys (dense: masked entries are computed too, as the attention kernels do).

    Per token: the reward embedding (2d), in every layer the query/key/value and output projections
    (8 d^2) and the MLP (4 d d_inner), and the action head (2 d A); per (token, key) pair and layer,
    the scores ``QK^T`` and the weighted sum ``AV`` (4d). Embedding lookups, layer norms and softmax
    are left out (no multiply-adds); ``tests/test_cost.py`` checks the count against torch's FLOP counter.
    """
    d, L = cfg.tf_n_embd, cfg.tf_n_layer
    per_token = 2 * d + L * (8 * d * d + 4 * d * cfg.tf_n_inner) + 2 * d * n_actions
    return tokens * per_token + L * 4 * d * tokens * keys


def scoring_flops(cfg: ModelConfig, rows: int | None = None) -> int:
    """FLOPs of the pass that scores an ``n_transit`` window (:func:`adkit.compress.context.attention_for`):
    every layer but the last whole (:func:`forward_flops`' terms), the last one's query/key/value
    projections and its scores, then nothing (the pass ends there). ``rows``: the last query rows read
    (:func:`adkit.compress.context.scoring_rows`), computed beside the fused attention in every layer;
    None: the whole pattern, the explicit path's own scores."""
    d, L, n = cfg.tf_n_embd, cfg.tf_n_layer, cfg.n_transit
    below = 2 * d * n + (L - 1) * (n * (8 * d * d + 4 * d * cfg.tf_n_inner) + 4 * d * n * n)
    read = 2 * d * n * n if rows is None else L * 2 * d * rows * n
    return below + 6 * d * d * n + read


def decision_flops(cfg: ModelConfig, n_actions: int, kept: int | None = None, scored: bool = False,
                   rows: int | None = None, evict: bool = False) -> int:
    """FLOPs of one whole decision: ``kept`` None is a step of the rolling cache (one token over its
    ``n_transit`` slots); ``evict``, a step of an evicting cache (one token over ``kept + 1`` slots; its
    scores are the attention the step computes anyway); otherwise the ``kept + 1`` tokens of a
    compressed context re-encoded, plus, when the strategy is ``scored`` by attention, the window's
    scoring pass (:func:`scoring_flops` of ``rows``)."""
    n = cfg.n_transit
    if kept is None:
        return forward_flops(cfg, 1, n, n_actions)
    if evict:
        return forward_flops(cfg, 1, kept + 1, n_actions)
    scoring = scoring_flops(cfg, rows) if scored else 0
    return forward_flops(cfg, kept + 1, kept + 1, n_actions) + scoring


@torch.no_grad()
def decision_cost(model, window: Tokens, name: str, compressor: Compressor | None = None,
                  generator: torch.Generator | None = None, scorer=None, kv: str = "reencode",
                  sets: str | None = None, **timing) -> tuple[float, float]:
    """``(ms, peak MB)`` of one decision for every row of ``window`` (B, n_transit, ·).

    ``name`` ``"none"``: a step of the rolling key/value cache, filled with the first
    ``n_transit - 1`` transitions beforehand; ``"full"``: the whole window re-encoded;
    otherwise ``compressor``'s decision: with ``kv="evict"`` a step of an evicting cache filled
    the same way (``sets``: its keep sets, see :meth:`ADTransformer.new_evicting_cache`), else
    :func:`compressed_logits` (attention pass of ``scorer``, default ``model``,
    if needed, selection, re-encoding). Peak MB counts the same two things for every mode: what
    persists between decisions (the key/value cache, or the window of transitions a re-encoding
    decision reads) and the transient activations. ``timing`` goes to :func:`time_ms`.
    """
    resident = sum(t.numel() * t.element_size() for t in window.values()) / 2**20  # the stored window
    if name == "none" or kv == "evict":
        batch = window["actions"].shape[0]
        cache = (model.new_cache(batch) if name == "none"
                 else model.new_evicting_cache(batch, compressor, generator=generator, sets=sets))
        fields = [window[k] for k in STEP_INPUTS]
        for i in range(window["actions"].shape[1] - 1):
            model.step(cache, *(f[:, i] for f in fields))
        resident = cache.nbytes() / 2**20  # the cache instead
        fn = lambda: model.step(cache, *(f[:, -1] for f in fields))  # noqa: E731
    elif name == "full":
        fn = lambda: model(**window)[:, -1]  # noqa: E731
    else:
        fn = lambda: compressed_logits(model, window, compressor, generator, scorer)  # noqa: E731
    return time_ms(fn, **timing), resident + peak_allocated_mb(fn)
