"""Figures of the training-free study: return against budget, and what each strategy keeps of a real context.

* :func:`plot_return_vs_budget`: the study's one figure (``RUN/study/return_vs_budget.png``).
* :class:`KeepView` + :func:`draw_keeps`: one real context of the run, its attention
  (layers and heads averaged, what attention-based strategies score with) and the
  transitions each strategy keeps, through the same :func:`adkit.context.compress_tokens`
  a compressed rollout uses.
* :func:`keep_explorer`: strategy and budget widgets that redraw it (JupyterLab).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from adkit import envs
from adkit.context import build, compress_tokens, query_attention
from adkit.plots import widget_panel
from adkit.study import BASELINES, reference, study_compressors, summary_table

CMAP = "Reds"


def plot_return_vs_budget(df, ax=None) -> Figure:
    """Mean return (± std over seeds) against transitions kept, one line per compressor.

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
    for name, g in s[~s["compressor"].isin(BASELINES)].groupby("compressor", sort=False):
        g = g.sort_values("budget")
        reduced = g["note"].str.startswith("reduced").any()
        y, err = ((g["share_mean"] * full, g["share_std"] * full) if reduced and full > 0
                  else (g["return_mean"], g["return_std"]))
        style = {"random": dict(color="0.45", ls="--", marker="x"),
                 "oracle": dict(color="k", ls=":", marker="o", mfc="none")}.get(name) or dict(marker="o",
                                                                                          color=next(colors))
        label = name + (f" ({g['tasks'].iloc[0]} tasks x {g['episodes'].iloc[0]} ep., by share)" if reduced else "")
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


# ---- what each strategy keeps -------------------------------------------------------------------------


@dataclass
class KeepView:
    """One context ``tokens`` (1, L, ·) of the run, its attention ``pattern`` (L, L) and, per
    strategy and budget, the kept transitions (indices into the L - 1 earlier ones; memoised)."""

    model: object
    env_name: str
    tokens: dict[str, torch.Tensor]
    pattern: np.ndarray
    names: list[str]
    extra: dict[str, dict] = field(default_factory=dict)
    _kept: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.tokens["actions"].shape[1] - 1

    def kept(self, name: str, budget: int) -> np.ndarray:
        if (name, budget) not in self._kept:
            c = build(name, budget, self.model, self.env_name, **self.extra.get(name, {}))
            attention = torch.as_tensor(self.pattern)[None] if c.needs_attention else None  # (1, L, L)
            ctx = compress_tokens(c, self.tokens, "original", attention, generator=torch.Generator().manual_seed(0))
            steps = self.tokens["positions"][0, :-1].numpy()
            self._kept[name, budget] = np.searchsorted(steps, ctx["positions"][0, :-1].numpy())
        return self._kept[name, budget]


def example_context(run_dir: str | Path, model, cfg, seed: int = 0, sample: int = 0) -> dict:
    """A real context of the run ``(1, n_transit, ·)`` (``cfg``: the run's config): sample
    ``sample`` of the attention file's rollout (else windows) contexts when notebook 02 made
    one, else the context of the last decision of a short full-context rollout on the first
    held-out task."""
    from adkit.attention import AttentionFileError, load_record
    from adkit.pipeline import MissingStage

    for source in ("rollout", "windows"):
        try:
            record = load_record(run_dir, source, layers=[0], heads=[0])
        except (MissingStage, AttentionFileError):
            continue
        return record.inputs([min(sample, record.n_samples - 1)])
    _, tasks = envs.task_split(cfg.env.name, cfg.env.split_seed, cfg.env.train_ratio)
    n, horizon = model.cfg.n_transit, envs.spec(cfg.env.name).horizon
    ref = reference(model, cfg.env.name, tasks[:1], seed, episodes=n // horizon + 2, decisions=2)
    return ref.probe


def keep_view(model, env_name: str, tokens: dict, names: Sequence[str] | None = None) -> KeepView:
    """A :class:`KeepView` of ``tokens`` for ``names`` (default every strategy, ``profile``
    profiled on this context)."""
    from adkit.study import profile_kwargs

    pattern = query_attention(model, tokens)[0].numpy()  # (L, L)
    return KeepView(model, env_name, tokens, pattern, list(names or study_compressors()),
                    {"profile": profile_kwargs(model, tokens)})


def draw_keeps(fig: Figure, view: KeepView, name: str, budget: int) -> Figure:
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
             title=f"{name} keeps {n - len(dropped)} of {n}", ylim=(len(pattern) - 0.5, -2.5))
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
    right.set_ylim(len(view.names) + 1.5, -1.5)
    ticks = np.concatenate([[0], starts[(starts > n // 20) & (starts < n - 1 - n // 20)], [n - 1]])
    for ax in (left, right):
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=7)
    right.set(xlabel="transition (stream step; dashed: episode starts)", title=f"kept at budget {budget}")
    right.legend(fontsize=7, loc="lower right")
    return fig


def keep_explorer(view: KeepView, name: str, budget: int):
    """Strategy and budget widgets that redraw :func:`draw_keeps` for ``view``; returns
    ``(box, draw)`` as :func:`adkit.plots.widget_panel` does."""
    import ipywidgets as w

    widgets = {"name": w.Dropdown(options=view.names, value=name, description="strategy"),
               "budget": w.IntSlider(value=budget, min=1, max=view.n - 1, description="budget",
                                     continuous_update=False)}
    return widget_panel(Figure(figsize=(13, 5), layout="constrained"), widgets,
                        lambda fig, **values: draw_keeps(fig, view, **values))
