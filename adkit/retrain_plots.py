"""Figures of the retrained study: both modes against budget, return against cost, attention after compression.

* :func:`plot_modes`: return against budget, retrained (solid) and training-free (dashed).
* :func:`plot_pareto`: return against measured decision time and against attention FLOPs,
  with the Pareto front of the retrained cells.
* :func:`attention_shift` + :func:`plot_attention_shift`: the original toolkit's
  "re-visualise after compression": where the decision's attention goes, by how far
  back a transition lies, for the full model on full windows and a retrained model
  on the same windows compressed.
* :func:`curve_explorer`: compressor / budget widgets over the per-episode curves.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from adkit.plots import widget_panel
from adkit.retrain import MODE, cell_dir, summary

STYLE = {"random": dict(color="0.45", marker="x")}


def _colors(names) -> dict[str, tuple]:
    """A colour per compressor; blue is kept for the full context (``none``), grey for ``random``."""
    tab = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (0, 7)]
    return {n: STYLE.get(n, {}).get("color", tab[i % len(tab)]) for i, n in enumerate(names)}


def plot_modes(df: pd.DataFrame) -> Figure:
    """Mean return (± std over seeds) against transitions kept: one colour per compressor,
    retrained solid, training-free dashed; the full-context returns and the optimum as lines."""
    s = summary(df)
    fig, ax = plt.subplots(figsize=(9, 5))
    names = [c for c in dict.fromkeys(s["compressor"]) if c != "none"]
    colors = _colors(names)
    for (name, mode), g in s[s["compressor"] != "none"].groupby(["compressor", "mode"], sort=False):
        g, retrained = g.sort_values("budget"), mode == MODE
        ax.errorbar(g["budget"], g["return_mean"], yerr=g["return_std"], color=colors[name], capsize=2,
                    marker="o" if retrained else "s", ls="-" if retrained else "--", lw=1.6 if retrained else 1,
                    ms=4, label=f"{name} ({mode})", alpha=1 if retrained else 0.6)
    for mode, ls in ((MODE, "-"), ("training-free", "--")):
        base = s[(s["compressor"] == "none") & (s["mode"] == mode)]
        if len(base):
            ax.axhline(base["return_mean"].iloc[0], color="tab:blue", ls=ls, lw=2, alpha=0.4,
                       label=f"full context ({mode})")
    ax.axhline(df["optimal"].mean(), color="k", ls=":", lw=1, label="optimal")
    budgets = sorted(set(s.loc[s["compressor"] != "none", "budget"]))
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set(xlabel="earlier transitions kept per decision", ylabel="mean episode return (held-out tasks)",
           title="compression: retrained (solid) vs training-free (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both lower cost and higher value, by cost."""
    order = np.lexsort((-value, cost))
    front, best = [], -np.inf
    for i in order:
        if value[i] > best:
            front.append(i)
            best = value[i]
    return np.array(front, dtype=int)


def plot_pareto(df: pd.DataFrame) -> Figure:
    """Return against measured decision time (left) and attention FLOPs per decision (right): every
    compressor x budget x mode, the retrained cells' Pareto front as a step line."""
    s = summary(df)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {**_colors([c for c in dict.fromkeys(s["compressor"]) if c != "none"]), "none": "tab:blue"}
    for ax, cost, label in ((axes[0], "decision_ms", "decision time, one stream per task (ms, measured)"),
                            (axes[1], "attn_flops", "attention FLOPs per decision (counted)")):
        for mode, marker in ((MODE, "o"), ("training-free", "s")):
            g = s[s["mode"] == mode]
            ax.scatter(g[cost], g["return_mean"], c=[colors[c] for c in g["compressor"]], marker=marker,
                       s=[60 if c == "none" else 28 for c in g["compressor"]], alpha=1 if mode == MODE else 0.45,
                       edgecolors="k" if mode == MODE else "none", linewidths=0.4)
            if mode == MODE and len(g):
                front = g.iloc[pareto_front(g[cost].to_numpy(float), g["return_mean"].to_numpy(float))]
                ax.step(front[cost], front["return_mean"], where="post", color="k", lw=1, alpha=0.6)
                for _, r in front.iterrows():
                    ax.annotate(f"{r['compressor']}@{r['budget']}", (r[cost], r["return_mean"]), fontsize=6,
                                xytext=(3, -8), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean episode return (held-out tasks)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=n) for n, c in colors.items()]
    handles += [plt.Line2D([], [], color="k", marker="o", ls="", mfc="none", label="retrained (front: line)"),
                plt.Line2D([], [], color="k", marker="s", ls="", alpha=0.45, label="training-free")]
    axes[1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("what compression costs and buys: return against cost")
    return fig


# ---- attention after compression ----------------------------------------------------------------------


@torch.no_grad()
def attention_shift(run_dir: str | Path, name: str, budget: int, seed: int = 0, contexts: int = 64,
                    histories: str | Path | None = None) -> pd.DataFrame:
    """Where the decision's attention goes (layer- and head-resolved means over ``contexts``
    training windows): the run's full model on full windows, and the retrained ``name`` @
    ``budget`` model on the same windows compressed as it was trained. One row per model,
    layer and distance back (in transitions) with the mean attention there relative to
    uniform (mass x visible tokens: 1 means as much as every visible token gets on average,
    so contexts of different lengths compare)."""
    from adkit.attention import window_contexts
    from adkit.collect import default_path
    from adkit.context import compress_window
    from adkit.histories import load as load_histories
    from adkit.model import load
    from adkit.pipeline import require, run_config
    from adkit.train import window_compressor

    cfg = run_config(run_dir)
    full = load(run_dir)
    cell = require(cell_dir(run_dir, name, budget, seed), "`adkit study --mode retrained` (notebook 05)")
    small = load(cell)
    h = load_histories(histories or default_path(cfg))
    inputs = window_contexts(cfg, h, contexts, seed=seed).inputs  # (B, n_transit, ·)
    compressor = window_compressor(run_config(cell), scorer=full)
    kept, _ = compress_window(compressor, inputs, torch.zeros_like(inputs["actions"]), full.cfg.positions, full,
                              torch.Generator().manual_seed(seed))
    rows = []
    for label, model, tokens in (("full context", full, inputs), (f"{name} @ {budget} (retrained)", small, kept)):
        _, cache = model.run_with_cache(**tokens, names="hook_pattern")
        visible = tokens["actions"].shape[1]
        pattern = visible * cache.stack("pattern")[:, :, :, -1, :-1].mean(2)  # (layer, B, H, L, L) -> (layer, B, L - 1)
        back = (tokens["positions"][:, -1:] - tokens["positions"][:, :-1]).numpy()  # (B, L - 1) steps back
        for layer, rel in enumerate(pattern.numpy()):
            by_back = pd.Series(rel.ravel()).groupby(back.ravel()).mean()
            rows += [{"model": label, "layer": layer, "back": int(b), "relative_attention": float(v)}
                     for b, v in by_back.items()]
    return pd.DataFrame(rows)


def plot_attention_shift(shift: pd.DataFrame) -> Figure:
    """One panel per layer: the decision's mean attention by distance back, full model against the retrained one."""
    layers = sorted(shift["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.2), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for (label, g), style in zip(shift[shift["layer"] == layer].groupby("model", sort=False),
                                     (dict(color="tab:blue", lw=1.5), dict(color="tab:red", marker="o", ms=3, lw=0.8))):
            ax.plot(g["back"], g["relative_attention"], label=label, **style)
        ax.axhline(1, color="0.5", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set(title=f"layer {layer}", xlabel="transitions back from the decision")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("decision's attention, x uniform")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("attention after compression: full model vs retrained compressed model", fontsize=10)
    fig.tight_layout()
    return fig


# ---- per-episode curves -------------------------------------------------------------------------------


def episode_curves(run_dir: str | Path, table: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    """Per retrained cell (compressor, budget): the per-seed mean return per episode ``(seeds, episodes)``."""
    curves = {}
    for (name, budget), g in table[table["mode"] == MODE].groupby(["compressor", "budget"]):
        runs = []
        for seed in sorted(g["seed"]):
            path = cell_dir(run_dir, name, int(budget), int(seed)) / "returns.csv"
            if path.exists():
                runs.append(pd.read_csv(path).groupby("episode")["return"].mean().to_numpy())
        if runs:
            curves[name, int(budget)] = np.array(runs)
    return curves


def draw_curves(fig: Figure, curves: dict, name: str, budget: int, optimal: float) -> Figure:
    """Into ``fig``: the per-episode return of ``name`` @ ``budget`` against the full-context one."""
    from adkit.plots import band

    fig.clear()
    ax = fig.subplots()
    full = next(v for (n, _), v in curves.items() if n == "none")
    band(ax, np.arange(1, full.shape[1] + 1), full, "full context (retrained)", color="tab:blue")
    if (name, budget) in curves:
        runs = curves[name, budget]
        band(ax, np.arange(1, runs.shape[1] + 1), runs, f"{name} @ {budget} (retrained)", color="tab:red")
    else:
        ax.text(0.5, 0.5, f"no cell {name} @ {budget}", transform=ax.transAxes, ha="center")
    ax.axhline(optimal, color="k", ls="--", lw=1, label=f"optimal ({optimal:.2f})")
    ax.set(xlabel="episode in context", ylabel="return (held-out tasks)",
           title=f"{name} @ {budget}: mean ± std over training seeds")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def curve_explorer(curves: dict, optimal: float, name: str | None = None, budget: int | None = None):
    """Compressor and budget widgets over :func:`draw_curves`; returns ``(box, draw)`` as
    :func:`adkit.plots.widget_panel` does."""
    import ipywidgets as w

    names = sorted({n for n, _ in curves if n != "none"})
    budgets = sorted({b for n, b in curves if n != "none"})
    widgets = {"name": w.Dropdown(options=names, value=name or names[0], description="compressor"),
               "budget": w.SelectionSlider(options=budgets, value=budget or budgets[-1], description="budget")}
    return widget_panel(Figure(figsize=(8, 4), layout="constrained"), widgets,
                        lambda fig, **values: draw_curves(fig, curves, optimal=optimal, **values))
