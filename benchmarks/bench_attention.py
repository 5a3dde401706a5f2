"""Attention extraction and figure cost: adkit vs the original toolkit's per-layer, per-sample loop.

    OMP_NUM_THREADS=1 python benchmarks/bench_attention.py [--contexts 1000] [--transit 80]
        [--samples 5] [--baseline-layers 4] [--baseline-contexts 1000] [--out DIR]

A model of the paper sizes (``ModelConfig`` defaults: 4 layers x 4 heads, width 32)
with random weights reads random contexts of ``--transit`` consecutive transitions.

1. Extraction, every layer and head of ``--contexts`` contexts: adkit's one batched
   pass through the hook points (:func:`adkit.analysis.attention.extract`, target 2 s for
   1,000 x 80) against the original's loop, which re-runs the model once per layer
   per sample and keeps that layer's pattern. Also the float16 write of the file.
2. The original figure set for every layer x ``--samples`` samples: adkit (extract,
   then :func:`adkit.analysis.figures.save_original_set`, target 30 s) against the
   original's way: per layer and sample, re-run the model, seaborn heatmaps of every
   head (14x10 in), the line plot (14x6 in) and per layer the 4-histogram summary
   (14x10 in), with ``bbox_inches="tight"``. Both sides save at ``--dpi`` (default
   300, the original's; adkit's own default is 120).

``--baseline-layers`` / ``--baseline-contexts`` time the baseline on fewer layers or
contexts and scale it linearly (its cost is a sum of identical per-layer, per-sample
steps); the output says when it did. Prints wall-clock and CPU seconds and their
ratios: on a 2-core machine shared with other jobs the wall clock is inflated by the
load, the CPU time of a one-thread run is not (it is the wall clock of an idle machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from adkit.analysis.attention import Contexts, extract, record_contexts, save_record  # noqa: E402
from adkit.analysis.figures import save_original_set  # noqa: E402
from adkit.analysis.insights import layer_stats  # noqa: E402
from adkit.data.tokens import Tokens  # noqa: E402
from adkit.model import ADTransformer, ModelConfig  # noqa: E402


def random_contexts(n: int, T: int, seed: int = 0) -> Contexts:
    """``n`` contexts of ``T`` consecutive transitions at random offsets of 1,000-step streams."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 1000 - T, (n, 1), generator=g)
    inputs = Tokens(states=torch.randint(0, 9, (n, T, 2), generator=g),
                    actions=torch.randint(0, 5, (n, T), generator=g),
                    rewards=(torch.rand(n, T, generator=g) < 0.2).float(),
                    next_states=torch.randint(0, 9, (n, T, 2), generator=g),
                    queries=torch.randint(0, 9, (n, T, 2), generator=g), positions=start + torch.arange(T))
    return Contexts(inputs, np.zeros((n, 2), int), np.arange(n), start[:, 0].numpy() + T, np.zeros(n, int))


@torch.no_grad()
def original_pattern(model, inputs, b: int, layer: int) -> torch.Tensor:
    """The original's step: re-run the model on sample ``b`` alone, keep layer ``layer``'s heads (H, T, T)."""
    one = inputs.rows(slice(b, b + 1))
    _, cache = model.run_with_cache(**one, names=f"blocks.{layer}.attn.hook_pattern")
    return cache["pattern", layer][0]


def timed(fn, *args) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``fn(*args)`` (CPU time is what a busy shared machine does not inflate)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def original_extraction(model, inputs, layers: int, contexts: int) -> None:
    for layer in range(layers):
        for b in range(contexts):
            original_pattern(model, inputs, b, layer)


def original_figures(model, inputs, layers: int, samples: int, out: Path, dpi: int) -> None:
    """The original's figure loop: re-run per layer and sample, seaborn heatmaps, 300-dpi PNGs."""
    for layer in range(layers):
        folder = out / f"layer_{layer}"
        folder.mkdir(parents=True, exist_ok=True)
        stats = []
        for b in range(samples):
            heads = original_pattern(model, inputs, b, layer).numpy()  # (H, T, T)
            fig, axes = plt.subplots(2, (len(heads) + 1) // 2, figsize=(14, 10))
            for i, (ax, p) in enumerate(zip(axes.flat, heads)):
                sns.heatmap(p, cmap="Reds", ax=ax, cbar=True, xticklabels=False, yticklabels=False)
                ax.set(title=f"Head {i + 1}", xlabel="Key Position", ylabel="Query Position")
            fig.tight_layout()
            fig.savefig(folder / f"attention_heatmap_sample{b}_layer{layer}.png", dpi=dpi, bbox_inches="tight")
            plt.close(fig)
            mean = heads.mean(0)  # (T, T)
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 6))
            a1.plot(mean[-1], marker="o", lw=2, ms=4)
            a2.bar(range(len(mean)), mean.mean(0), alpha=0.7, color="steelblue")
            for ax in (a1, a2):
                ax.axvline(len(mean) - 1, color="r", ls="--", label="Query Position")
                ax.legend()
                ax.grid(True, alpha=0.3)
            fig.tight_layout()
            fig.savefig(folder / f"attention_lines_sample{b}_layer{layer}.png", dpi=dpi, bbox_inches="tight")
            plt.close(fig)
            ctx = mean[-1, :-1]
            stats.append([ctx.mean(), ctx.std(), -(ctx * np.log(ctx + 1e-10)).sum(), ctx[-len(ctx) // 4:].mean()
                          / (ctx[:len(ctx) // 4].mean() + 1e-10)])
        fig, axes = plt.subplots(2, 2, figsize=(14, 10))
        for ax, column in zip(axes.flat, np.asarray(stats).T):
            ax.hist(column, bins=30, alpha=0.7, edgecolor="black")
            ax.axvline(column.mean(), color="r", ls="--")
        fig.tight_layout()
        fig.savefig(folder / f"attention_summary_layer{layer}.png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)


def adkit_figures(model, samples: int, transit: int, out: Path, dpi: int) -> None:
    record = record_contexts(model, random_contexts(samples, transit, seed=1), "windows")
    save_original_set(record, out, samples, dpi=dpi, stats=layer_stats(record))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--transit", type=int, default=80, help="transitions per context (n_transit)")
    ap.add_argument("--samples", type=int, default=5, help="samples per layer in the figure set")
    ap.add_argument("--baseline-layers", type=int, default=None, help="time the original on fewer layers, scale up")
    ap.add_argument("--baseline-contexts", type=int, default=None, help="... and on fewer contexts, scale up")
    ap.add_argument("--dpi", type=int, default=300, help="resolution of both figure sets (the original saves 300)")
    ap.add_argument("--out", default=None, help="where figures and the file go (default: a temporary folder)")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig(n_transit=args.transit)
    model = ADTransformer(cfg).eval()
    L = cfg.tf_n_layer
    ctx = random_contexts(args.contexts, args.transit)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_attention_"))
    print(f"paper-size model: {L} layers x {cfg.tf_n_head} heads, width {cfg.tf_n_embd}; "
          f"torch threads {torch.get_num_threads()}; output in {out}")

    extract(model, ctx.inputs.rows(slice(0, 64)))  # warm-up
    runs = [timed(extract, model, ctx.inputs) for _ in range(3)]
    wall, cpu = min(runs)
    record = record_contexts(model, ctx, "windows")
    t_write, _ = timed(save_record, record, out / "attention.h5")
    bl, bc = args.baseline_layers or L, args.baseline_contexts or args.contexts
    scale = (L / bl) * (args.contexts / bc)
    o_wall, o_cpu = (t * scale for t in timed(original_extraction, model, ctx.inputs, bl, bc))
    scaled = f" (scaled from {bl} layers x {bc} contexts)" if scale != 1 else ""
    print(f"\n1. extraction, all layers and heads, {args.contexts} contexts x {args.transit} transitions "
          "(wall / CPU seconds)")
    print(f"   adkit, one batched pass      {wall:6.2f} / {cpu:5.2f} s   (best of 3 runs; target 2 s)")
    mib = (out / "attention.h5").stat().st_size / 2**20
    print(f"   + write float16 file         {t_write:6.2f} s   ({mib:.0f} MiB)")
    print(f"   original, per layer x sample {o_wall:6.2f} / {o_cpu:5.2f} s{scaled}   "
          f"ratio {o_wall / wall:.1f}x wall, {o_cpu / cpu:.1f}x CPU")

    f_wall, f_cpu = timed(adkit_figures, model, args.samples, args.transit, out / "adkit_figs", args.dpi)
    inputs = random_contexts(args.samples, args.transit, seed=1).inputs
    b_wall, b_cpu = (t * L / bl for t in timed(original_figures, model, inputs, bl, args.samples,
                                                  out / "original_figs", args.dpi))
    scaled = f" (scaled from {bl} layers)" if bl != L else ""
    print(f"\n2. the original figure set, {L} layers x {args.samples} samples ({L * (2 * args.samples + 1)} PNGs), "
          f"both at {args.dpi} dpi")
    print(f"   adkit (extract + save)       {f_wall:6.2f} / {f_cpu:5.2f} s   (target 30 s)")
    print(f"   original (re-run + save)     {b_wall:6.2f} / {b_cpu:5.2f} s{scaled}   "
          f"ratio {b_wall / f_wall:.1f}x wall, {b_cpu / f_cpu:.1f}x CPU")


if __name__ == "__main__":
    main()
