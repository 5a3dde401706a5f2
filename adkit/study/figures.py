"""Figures of the compression study, drawn from its tables (and from already computed views); nothing here
runs a model.

* :func:`plot_return_vs_budget`: training-free return against budget (``RUN/study/return_vs_budget.png``).
* :func:`plot_cost`: training-free return against measured decision time and memory, re-encoding
  against evicting (``RUN/study/cost.png``).
* :func:`draw_keeps` + :func:`keep_explorer`: one real context, its attention and what each strategy
  keeps (a :class:`adkit.study.keeps.KeepView`), with strategy and budget widgets.
* :func:`plot_modes`: return against budget, retrained (solid) and training-free (dashed).
* :func:`plot_pareto`: return against measured decision time and FLOPs per decision, with the Pareto front.
* :func:`plot_attention_shift`: where the decision's attention goes, full model against a retrained one.
* :func:`plot_shares_over_seeds`: share of the full-context return against budget over training seeds,
  a panel per part of the study (``benchmarks/bench_seeds_study.py --figure``).
* :func:`draw_curves` + :func:`curve_explorer`: per-episode curves of the retrained cells.
"""

from __future__ import annotations

import math

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from adkit import envs
from adkit.plots import band, widget_panel
from adkit.study.summaries import BASELINES, PART, RETRAINED, part_label, summary, summary_table, with_parts

CMAP = "Reds"


def plot_return_vs_budget(df, ax=None) -> Figure:
    """Mean return (± std over seeds) against transitions kept, one line per compressor and kv
    (re-encoded: solid; evicting cache: dashed, same colour).

    x is the number of earlier transitions a decision kept (the budget; fewer or more
    where a strategy decides, e.g. ``threshold`` or a ``profile`` rule of ``full``).
    Horizontal lines: the full-context return (``none``) and the optimum; the right axis
    reads the same heights as a share of the full-context return. A compressor run on a
    reduced protocol (the oracle) is placed by its share of the full-context return on
    that same protocol (said in the legend), so every line compares like with like.
    """
    s = summary_table(df)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(10, 5))
    tab20 = plt.get_cmap("tab20").colors
    colors = iter(tab20[0::2] + tab20[1::2])  # 20 distinct colours, the dark ones first
    base = s[s["compressor"] == "none"]
    full = float(base["return_mean"].mean()) if len(base) else math.nan
    strategies = s[~s["compressor"].isin(BASELINES)]
    colour = {name: next(colors) for name in dict.fromkeys(strategies["compressor"])
              if name not in ("random", "oracle")}
    for (name, kv), g in strategies.groupby(["compressor", "kv"], sort=False):
        g = g.sort_values("budget")
        reduced = g["note"].str.startswith("reduced").any()
        y, err = ((g["share_mean"] * full, g["share_std"] * full) if reduced and full > 0
                  else (g["return_mean"], g["return_std"]))
        style = {"random": dict(color="0.45", marker="x"),
                 "oracle": dict(color="k", ls=":", marker="o", mfc="none")}.get(name) or dict(marker="o",
                                                                                          color=colour[name])
        style.setdefault("ls", "--" if kv == "evict" else "-")
        label = (name + (" (evict)" if kv == "evict" else "")
                 + (f" ({g['tasks'].iloc[0]} tasks x {g['episodes'].iloc[0]} ep., by share)" if reduced else ""))
        ax.errorbar(g["context_tokens"] - 1, y, yerr=err, label=label, capsize=2, lw=1.5, ms=4, elinewidth=0.8,
                    **style)
    ticks = sorted(set(s["budget"]) - set(base["budget"]) | set(base["context_tokens"] - 1))
    if len(base):
        ax.axhline(full, color="tab:blue", lw=2, alpha=0.5, label="no compression")
        ax.axhline(float(df[df["compressor"] == "none"]["optimal"].mean()), color="k", ls="--", lw=1, label="optimal")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set(xlabel="earlier transitions kept per decision", ylabel="mean episode return (held-out tasks)",
           title="training-free compression: return against budget")
    if full > 0:
        right = ax.secondary_yaxis("right", functions=(lambda y: 100 * y / full, lambda p: p * full / 100))
        right.set_ylabel("% of the full-context return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.1, 1.0))
    return fig


def plot_cost(df: pd.DataFrame) -> Figure:
    """Training-free return (mean over seeds) against measured decision time (left) and peak memory
    (right): circles re-encode the kept transitions, triangles keep an evicting cache; the full
    context (rolling cache) and DICP's re-encoded hard context as stars; the Pareto front of all
    points as a step line."""
    s = summary_table(df)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {**_colors([c for c in dict.fromkeys(s["compressor"]) if c not in BASELINES]),
              "none": "tab:blue", "full": "k"}
    markers = {"reencode": "o", "evict": "^", "cache": "*", "recompute": "*"}
    for ax, cost, label in ((axes[0], "decision_ms", "decision time, all held-out tasks batched (ms, measured)"),
                            (axes[1], "peak_mem_mb", "peak memory of a decision (MB, measured)")):
        for kv, g in s.groupby("kv", sort=False):
            ax.scatter(g[cost], g["return_mean"], c=[colors[c] for c in g["compressor"]], marker=markers[kv],
                       s=[120 if c in BASELINES else 30 for c in g["compressor"]], edgecolors="k", linewidths=0.3)
        draw_front(ax, s, cost, alpha=0.5)
        cost_axis(ax, label)
    axes[0].set_ylabel("mean episode return (held-out tasks)")
    names = {"none": "full context (rolling cache)", "full": "DICP hard context (re-encoded)"}
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=names.get(n, n)) for n, c in colors.items()]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="", mfc="none", label=f"kv: {kv}")
                for kv, m in markers.items() if kv in ("reencode", "evict")]
    axes[1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("training-free compression: return against what a decision costs")
    return fig


# ---- what each strategy keeps -------------------------------------------------------------------------


def draw_keeps(fig: Figure, view, name: str, budget: int) -> Figure:
    """Into ``fig``: the attention heatmap with the transitions ``name`` drops greyed out, and
    every strategy's kept transitions at ``budget`` (rows) over the same keys."""
    n, pattern = view.n, view.pattern
    steps = view.tokens["positions"][0].numpy()
    rewarded = np.flatnonzero(view.tokens["rewards"][0, :-1].numpy() > 0)
    horizon = envs.spec(view.env_name).horizon
    starts = np.flatnonzero(np.diff(steps // horizon)) + 1  # episode boundaries
    fig.clear()
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    visible = pattern[np.tril_indices(len(pattern))]
    left.imshow(pattern, cmap=CMAP, vmin=0, vmax=float(np.quantile(visible, 0.99)) or 1.0, interpolation="nearest")
    dropped = np.setdiff1d(np.arange(n), view.kept(name, budget))
    for j in dropped:
        left.axvspan(j - 0.5, j + 0.5, color="0.6", alpha=0.55, lw=0)
    left.scatter(rewarded, np.full(len(rewarded), -1.5), marker="v", color="tab:green", s=14, clip_on=False)
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(xlabel="key transition (grey: dropped)", ylabel="query token",
             title=f"{name} keeps {n - len(dropped)} of {n}",
             ylim=(len(pattern) - 0.5, -2.5 if len(rewarded) else -0.5))  # room for the reward marks
    keep = np.zeros((len(view.names), n))
    for i, other in enumerate(view.names):
        keep[i, view.kept(other, budget)] = 1
    right.imshow(keep, cmap="Blues", vmin=0, vmax=1.3, aspect="auto", interpolation="nearest")
    right.bar(np.arange(n), pattern[-1, :n] / pattern[-1, :n].max() * 0.9, bottom=len(view.names) + 0.4,
              width=1.0, color="tab:red")  # the query row, scaled into a strip under the rows
    right.scatter(rewarded, np.full(len(rewarded), -0.9), marker="v", color="tab:green", s=14,
                  label="rewarded transition")
    right.add_patch(plt.Rectangle((-0.5, view.names.index(name) - 0.5), n, 1, fill=False, ec="k", lw=1.5))
    for ax in (left, right):
        for s in starts:
            ax.axvline(s - 0.5, color="0.3", ls="--", lw=0.7)
    right.set_yticks(list(range(len(view.names))) + [len(view.names) + 0.8], view.names + ["query attention"],
                     fontsize=7)
    right.set_ylim(len(view.names) + 1.5, -1.5 if len(rewarded) else -0.5)
    ticks = np.concatenate([[0], starts[(starts > n // 20) & (starts < n - 1 - n // 20)], [n - 1]])
    for ax in (left, right):
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=7)
    right.set(xlabel="transition (stream step; dashed: episode starts)", title=f"kept at budget {budget}")
    if len(rewarded):  # above the axes: the query strip fills the bottom
        right.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def keep_explorer(view, name: str, budget: int):
    """Strategy and budget widgets that redraw :func:`draw_keeps` for ``view``; returns
    ``(box, draw)`` as :func:`adkit.plots.widget_panel` does."""
    widgets = {"name": w.Dropdown(options=view.names, value=name, description="strategy"),
               "budget": w.IntSlider(value=budget, min=1, max=view.n - 1, description="budget",
                                     continuous_update=False)}
    return widget_panel(Figure(figsize=(13, 5), layout="constrained"), widgets,
                        lambda fig, **values: draw_keeps(fig, view, **values))


# ---- retrained against training-free ------------------------------------------------------------------


STYLE = {"random": dict(color="0.45", marker="x")}


def _colors(names) -> dict[str, tuple]:
    """A colour per compressor, 16 distinct before they repeat (tab20, dark shades first); blue is kept
    for the full context (``none``), grey for ``random``."""
    tab20 = plt.get_cmap("tab20").colors
    tab = [tab20[i + light] for light in (0, 1) for i in range(2, 20, 2) if i != 14]
    return {n: STYLE.get(n, {}).get("color", tab[i % len(tab)]) for i, n in enumerate(names)}


def plot_modes(df: pd.DataFrame) -> Figure:
    """Mean return (± std over seeds) against transitions kept: one colour per compressor,
    retrained solid, training-free dashed, evicting-cache cells with triangles; the full-context
    returns and the optimum as lines."""
    s = summary(df)
    fig, ax = plt.subplots(figsize=(9, 5))
    names = [c for c in dict.fromkeys(s["compressor"]) if c != "none"]
    colors = _colors(names)
    for (name, mode, kv), g in s[s["compressor"] != "none"].groupby(["compressor", "mode", "kv"], sort=False):
        g, retrained, evict = g.sort_values("budget"), mode == RETRAINED, kv == "evict"
        ax.errorbar(g["budget"], g["return_mean"], yerr=g["return_std"], color=colors[name], capsize=2,
                    marker="^" if evict else "o" if retrained else "s", ls="-" if retrained else "--",
                    lw=1.6 if retrained else 1, ms=4, label=f"{name} ({mode}{', evict' if evict else ''})",
                    alpha=1 if retrained else 0.6)
    for mode, ls in ((RETRAINED, "-"), ("training-free", "--")):
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


def plot_shares_over_seeds(table: pd.DataFrame, recommended: str | None = None, columns: int = 3,
                           dodge: float = 0.025) -> Figure:
    """Share of the full-context return (mean ± sample std over training seeds) against transitions kept:
    one panel per part of the study in ``table`` (training-free or retrained, fine-tuned or not, and
    the cache it decided with), ``columns`` panels a row, one colour per strategy in every panel,
    ``random`` grey, ``recommended`` drawn thick, the full context at 100%. Each strategy's points are
    shifted by ``dodge`` octaves from the next one's in its panel, centred on the budget, so equal cells
    (``profile`` building ``h2o``) and overlapping error bars stay apart; the ticks mark the budgets.

    ``table``: shares over training seeds, as :func:`adkit.study.summaries.over_seeds` gives them (or
    as saved to CSV).
    """
    table = with_parts(table)
    cells = table[~table["compressor"].isin(BASELINES)]
    parts = list(cells.groupby(PART, sort=False))
    colors = _colors(list(dict.fromkeys(cells["compressor"])))

    def style(name: str) -> dict:
        return dict(color=colors[name], marker=STYLE.get(name, {}).get("marker", "o"),
                    lw=3 if name == recommended else 1.2)

    cols = min(columns, len(parts))
    rows = math.ceil(len(parts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols + 2.5, 4.5 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(parts):]:
        ax.set_visible(False)
    for ax, (key, part) in zip(axes.flat, parts):
        names = [n for n in colors if n in set(part["compressor"])]
        shift = {n: 2 ** (dodge * (i - (len(names) - 1) / 2)) for i, n in enumerate(names)}  # x factor
        for name, g in part.groupby("compressor", sort=False):
            g = g.sort_values("budget")
            ax.errorbar(g["budget"] * shift[name], 100 * g["mean"], yerr=100 * g["std"].fillna(0.0), capsize=2, ms=4,
                        label=name, **style(name))
        ax.axhline(100, color="tab:blue", lw=2, alpha=0.4)
        ax.set_title(part_label(*key), fontsize=10)
        budgets = sorted(set(part["budget"]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="transitions kept per decision")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"% of the full-context return\n(mean ± std over {cells['seeds'].max()} training seeds)")
    handles = [plt.Line2D([], [], label=n + (" (recommended)" if n == recommended else ""), **style(n)) for n in colors]
    handles.append(plt.Line2D([], [], color="tab:blue", lw=2, alpha=0.4, label="full context"))
    axes[0, -1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def draw_front(ax, s: pd.DataFrame, cost: str, alpha: float) -> None:
    """The Pareto front of summary rows ``s`` (column ``cost`` against ``return_mean``) as a step line,
    each point named ``compressor@budget`` (`` evict`` for an evicting cache)."""
    front = s.iloc[pareto_front(s[cost].to_numpy(float), s["return_mean"].to_numpy(float))]
    ax.step(front[cost], front["return_mean"], where="post", color="k", lw=1, alpha=alpha)
    for _, r in front.iterrows():
        ax.annotate(f"{r['compressor']}@{r['budget']}{' evict' if r['kv'] == 'evict' else ''}",
                    (r[cost], r["return_mean"]), fontsize=6, xytext=(3, -8), textcoords="offset points")


def cost_axis(ax, label: str) -> None:
    """A measured or counted cost on a log x axis."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=label)
    ax.grid(alpha=0.3)


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
    """Return against measured decision time, peak memory and FLOPs per decision: every
    compressor x budget x mode x kv, the retrained cells' Pareto front as a step line; evicting-cache
    cells are triangles."""
    s = summary(df)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    colors = {**_colors([c for c in dict.fromkeys(s["compressor"]) if c != "none"]), "none": "tab:blue"}
    for ax, cost, label in ((axes[0], "decision_ms", "decision time, one stream per task (ms, measured)"),
                            (axes[1], "peak_mem_mb", "peak memory of a decision (MB, measured)"),
                            (axes[2], "flops", "FLOPs per decision (whole forward, counted)")):
        for mode, marker in ((RETRAINED, "o"), ("training-free", "s")):
            g = s[s["mode"] == mode]
            for evict, part in g.groupby(g["kv"] == "evict"):
                ax.scatter(part[cost], part["return_mean"], c=[colors[c] for c in part["compressor"]],
                           marker="^" if evict else marker, s=[60 if c == "none" else 28 for c in part["compressor"]],
                           alpha=1 if mode == RETRAINED else 0.45, edgecolors="k" if mode == RETRAINED else "none",
                           linewidths=0.4)
            if mode == RETRAINED and len(g):
                draw_front(ax, g, cost, alpha=0.6)
        cost_axis(ax, label)
    axes[0].set_ylabel("mean episode return (held-out tasks)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=n) for n, c in colors.items()]
    handles += [plt.Line2D([], [], color="k", marker="o", ls="", mfc="none", label="retrained (front: line)"),
                plt.Line2D([], [], color="k", marker="s", ls="", alpha=0.45, label="training-free"),
                plt.Line2D([], [], color="k", marker="^", ls="", mfc="none", label="evicting cache")]
    axes[2].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("what compression costs and buys: return against cost")
    return fig


# ---- attention after compression ----------------------------------------------------------------------


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


def draw_curves(fig: Figure, curves: dict, name: str, budget: int, optimal: float) -> Figure:
    """Into ``fig``: the per-episode return of ``name`` @ ``budget`` against the full-context one."""
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
    names = sorted({n for n, _ in curves if n != "none"})
    budgets = sorted({b for n, b in curves if n != "none"})
    widgets = {"name": w.Dropdown(options=names, value=name or names[0], description="compressor"),
               "budget": w.SelectionSlider(options=budgets, value=budget or budgets[-1], description="budget")}
    return widget_panel(Figure(figsize=(8, 4), layout="constrained"), widgets,
                        lambda fig, **values: draw_curves(fig, curves, optimal=optimal, **values))
