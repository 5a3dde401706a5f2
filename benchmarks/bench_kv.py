"""What a decision costs with the full rolling cache, DICP's re-encode, a re-encoded compressed
context and an evicting key/value cache, at growing contexts.

    OMP_NUM_THREADS=1 python benchmarks/bench_kv.py [--contexts 80 320 400 1280] [--fraction 0.25]
        [--streams 72] [--strategies recency h2o reward-recent]

For each context C a model of the Key-to-Door profiles' sizes (64 wide, 4 layers, 4 heads, both
episode inputs) with ``n_transit = C`` decides for ``--streams`` streams at once (24 held-out
tasks x 3 seeds by default), from C random transitions per stream, in each mode:

* ``full cache``: the rolling key/value cache of C entries: **the full context**, the reference;
* ``recompute``: DICP's hard context, the last C transitions re-encoded at every decision;
* ``reencode``: a strategy keeps K = fraction x C of the context, re-encoded at every decision
  (attention-scored strategies first run the full window to score it: strategies that score with the
  deciding query's row, or SnapKV's last rows, read those rows beside the fused attention;
  ``reencode, whole pattern`` scores the same strategies from every layer's whole pattern, the
  explicit path, for comparison);
* ``evict``: an evicting cache of K entries per layer, same strategies; attention-scored ones keep
  their own sets (per layer and head for H2O, per layer for TOVA), and again one set per stream
  (``one set per stream``) for comparison.

Per mode: median wall-clock of one batched decision (``--calls`` decisions after a warm-up),
peak memory (what persists between decisions plus the decision's activations, measured with
torch.profiler) and whole-decision FLOPs per stream, each also as a ratio of the full cache's in
the same process. Weights are untrained: cost does not depend on them.

A second table times the scoring pass alone, reading 1 row, 8 rows (SnapKV's default) or the whole
pattern, run whole against ended after the last layer's attention scores (what the study does).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
from pathlib import Path

import torch

from adkit.compress import make
from adkit.compress.context import attention_pass, compress_tokens, query_attention, scoring_rows
from adkit.compress.cost import decision_cost, decision_flops, forward_flops, peak_allocated_mb, scoring_flops, time_ms
from adkit.compress.evict import kv_forms
from adkit.data.tokens import Tokens
from adkit.model import ADTransformer, ModelConfig


def random_window(streams: int, length: int, seed: int = 1) -> Tokens:
    """``length`` random Key-to-Door transitions per stream, rewards on 10% of them."""
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(streams, length, generator=g) < 0.1).float()
    return Tokens(states=torch.randint(0, 9, (streams, length, 2), generator=g),
                  actions=torch.randint(0, 5, (streams, length), generator=g), rewards=rewards,
                  next_states=torch.randint(0, 9, (streams, length, 2), generator=g),
                  queries=torch.randint(0, 9, (streams, length, 2), generator=g),
                  positions=torch.arange(length).expand(streams, length),
                  episode_return=rewards.cumsum(1).clamp_max(2))


def pattern_scored_cost(model, window: Tokens, compressor, timing: dict) -> tuple[float, float]:
    """``(ms, peak MB)`` of a re-encoded decision scored from the layers' whole patterns (explicit attention)
    instead of the query's row: the comparison for strategies that read only that row."""
    resident = sum(t.numel() * t.element_size() for t in window.values()) / 2**20

    @torch.no_grad()
    def decide():
        ctx = compress_tokens(compressor, window, model.positions, query_attention(model, window))
        return model(**ctx)[:, -1]

    return time_ms(decide, **timing), resident + peak_allocated_mb(decide)


def scoring_passes(context: int, streams: int, calls: int) -> list[dict]:
    """The scoring pass over ``context`` transitions reading 1 row, 8 rows or the whole pattern (None): ms run
    whole and ended after the last layer's scores, in the same process, and the FLOPs of each."""
    cfg = ModelConfig(n_transit=context, tf_n_embd=64, tf_n_layer=4, tf_n_head=4, tf_n_inner=256,
                      tf_dropout=0.0, tf_attn_dropout=0.0, episode_step=True, episode_return=True)
    model, window = ADTransformer(cfg, "key-to-door").eval(), random_window(streams, context)
    rows_out = []
    for rows in (1, 8, None):
        point = "hook_pattern" if rows is None else "hook_query_pattern"  # every layer's whole pattern, or rows
        whole, ended = (time_ms(functools.partial(attention_pass, model, window, point, lambda a, hook: None,
                                                  rows or 1, stop), budget_s=10.0, max_calls=calls)
                        for stop in (False, True))
        beside = 0 if rows is None else cfg.tf_n_layer * 2 * cfg.tf_n_embd * rows * context  # the rows' scores
        rows_out.append({"context": context, "rows": "whole pattern" if rows is None else rows, "whole_ms": whole,
                         "ended_ms": ended, "ratio": whole / ended,
                         "whole_flops": forward_flops(cfg, context, context, model.n_actions) + beside,
                         "ended_flops": scoring_flops(cfg, rows)})
    return rows_out


def measure(context: int, fraction: float, streams: int, strategies: list[str], calls: int) -> list[dict]:
    torch.manual_seed(0)
    cfg = ModelConfig(n_transit=context, tf_n_embd=64, tf_n_layer=4, tf_n_head=4, tf_n_inner=256,
                      tf_dropout=0.0, tf_attn_dropout=0.0, episode_step=True, episode_return=True)
    model = ADTransformer(cfg, "key-to-door").eval()
    window, budget = random_window(streams, context), max(1, round(fraction * context))
    timing = {"budget_s": 10.0, "max_calls": calls}
    modes = [("full cache", "none", None, "reencode", None), ("recompute", "full", None, "reencode", None)]
    modes += [(kv, name, make(name, budget), kv, None) for kv in ("reencode", "evict") for name in strategies
              if kv in kv_forms(name, [kv])]  # strategies without an evicting form are re-encoded only
    modes += [("evict, one set per stream", name, c, "evict", "stream") for _, name, c, kv, _ in modes[2:]
              if kv == "evict" and c.needs_attention]
    modes += [("reencode, whole pattern", name, c, "reencode", None) for _, name, c, kv, _ in modes[2:]
              if kv == "reencode" and c.needs_attention and scoring_rows(c) is not None]
    rows = []
    for mode, name, compressor, kv, sets in modes:
        if mode == "reencode, whole pattern":
            ms, mb = pattern_scored_cost(model, window, compressor, timing)
        else:
            ms, mb = decision_cost(model, window, name, compressor, torch.Generator().manual_seed(0), kv=kv,
                                   sets=sets, **timing)
        kept = None if compressor is None else budget
        if name == "none":
            flops = decision_flops(cfg, model.n_actions)
        elif name == "full":
            flops = forward_flops(cfg, context, context, model.n_actions)
        else:
            read = None if mode == "reencode, whole pattern" else scoring_rows(compressor)
            flops = decision_flops(cfg, model.n_actions, kept, compressor.needs_attention, read, evict=kv == "evict")
        rows.append({"context": context, "mode": mode, "strategy": "" if compressor is None else name,
                     "kept": kept, "decision_ms": ms, "peak_mb": mb, "flops": flops})
    base = rows[0]
    for r in rows:
        for k in ("decision_ms", "peak_mb", "flops"):
            r[f"{k}_vs_full"] = r[k] / base[k]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[80, 320, 400, 1280])
    p.add_argument("--fraction", type=float, default=0.25, help="K as a share of the context")
    p.add_argument("--streams", type=int, default=72)
    p.add_argument("--strategies", nargs="+", default=["recency", "h2o", "reward-recent"])
    p.add_argument("--calls", type=int, default=30, help="timed decisions per mode (after one warm-up)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    print(f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.streams} streams, K = {args.fraction:g} x context")
    print("| context | mode | strategy | K | decision ms | x full | peak MB | x full | MFLOP/stream | x full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for c in args.contexts:
        for r in measure(c, args.fraction, args.streams, args.strategies, args.calls):
            rows.append(r)
            print(f"| {c} | {r['mode']} | {r['strategy']} | {r['kept'] or c} | {r['decision_ms']:.2f} | "
                  f"{r['decision_ms_vs_full']:.2f} | {r['peak_mb']:.1f} | {r['peak_mb_vs_full']:.2f} | "
                  f"{r['flops'] / 1e6:.2f} | {r['flops_vs_full']:.2f} |", flush=True)
    print("\n| context | scoring rows | whole pass ms | ended ms | ratio | whole MFLOP/stream | ended |")
    print("|---|---|---|---|---|---|---|")
    for c in args.contexts:
        for r in scoring_passes(c, args.streams, args.calls):
            rows.append(r)
            print(f"| {c} | {r['rows']} | {r['whole_ms']:.2f} | {r['ended_ms']:.2f} | {r['ratio']:.2f} | "
                  f"{r['whole_flops'] / 1e6:.2f} | {r['ended_flops'] / 1e6:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
