"""What a decision or a training step costs, measured (wall-clock, peak memory) and counted (attention FLOPs).

* :func:`time_ms`: median wall-clock of a call.
* :func:`peak_allocated_mb`: the most tensor memory a call held at once, from the
  allocation events ``torch.profiler`` records (no sampling).
* :func:`causal_pairs` and :func:`attention_flops`: the work of the attention scores
  and the weighted sum (``QK^T`` and ``AV``), counted from token counts.
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
from adkit.data.tokens import Tokens


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


def causal_pairs(tokens: int, window: int | None = None) -> int:
    """(query, key) pairs a causal pass over ``tokens`` tokens scores, each query seeing at most ``window`` keys."""
    w = tokens if window is None else min(window, tokens)
    return w * (w + 1) // 2 + (tokens - w) * w


def attention_flops(n_layer: int, n_embd: int, pairs: int) -> int:
    """FLOPs of ``QK^T`` and ``AV`` over ``pairs`` (query, key) pairs in every layer: 2 x 2 x d per pair."""
    return 4 * n_embd * n_layer * pairs


@torch.no_grad()
def decision_cost(model, window: Tokens, name: str, compressor: Compressor | None = None,
                  generator: torch.Generator | None = None, scorer=None) -> tuple[float, float]:
    """``(ms, peak MB)`` of one decision for every row of ``window`` (B, n_transit, ·).

    ``name`` ``"none"``: a step of the rolling key/value cache, filled with the first
    ``n_transit - 1`` transitions beforehand (the cache's size is added to the peak);
    ``"full"``: the whole window re-encoded; otherwise ``compressor``'s decision
    (:func:`compressed_logits`: attention pass of ``scorer``, default ``model``, if needed,
    selection, re-encoding).
    """
    resident = 0.0
    if name == "none":
        cache = model.new_cache(window["actions"].shape[0])
        fields = [window[k] for k in ("states", "actions", "rewards", "next_states", "queries")]
        for i in range(window["actions"].shape[1] - 1):
            model.step(cache, *(f[:, i] for f in fields))
        resident = sum(t.numel() * t.element_size() for t in cache.k + cache.v) / 2**20
        fn = lambda: model.step(cache, *(f[:, -1] for f in fields))  # noqa: E731
    elif name == "full":
        fn = lambda: model(**window)[:, -1]  # noqa: E731
    else:
        fn = lambda: compressed_logits(model, window, compressor, generator, scorer)  # noqa: E731
    return time_ms(fn), resident + peak_allocated_mb(fn)
