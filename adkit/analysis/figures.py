"""Attention figures: the original toolkit's set, statistics grids, rollout, ablation, and a slider explorer.

Everything reads an :class:`adkit.analysis.attention.AttentionRecord` (never the model), so
redrawing for another layer, head or sample costs a plot, not a forward pass.
Axes are labelled with stream steps; dashed lines mark episode boundaries.

The original set, same names, under ``FIGS/attention/layer_{l}/`` (:func:`save_original_set`)::

    attention_heatmap_sample{i}_layer{l}.png   one panel per head
    attention_lines_sample{i}_layer{l}.png     query row | mean attention received per key
    attention_summary_layer{l}.png             4 histograms across samples

and beside them in ``FIGS/attention/`` (:func:`save_figures`): ``stats_grid.png``,
``episode_mass.png``, ``rollout_sample{i}.png``, ``trajectory{i}_layer{l}.png``
(rollout records), ``ablation.png`` and ``budget_coverage.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from adkit.analysis.attention import AttentionRecord
from adkit.analysis.insights import AblationResult, episode_profile, layer_stats
from adkit.analysis.metrics import attention_rollout, information_events, stats_table
from adkit.plots import widget_panel

CMAP = "Reds"  # the original's heatmap colours
DPI = 120
TITLE_Y = 1.01  # a fixed title height: matplotlib's automatic placement costs a layout pass per axes


def _boundaries(episode: np.ndarray) -> np.ndarray:
    """Token indices where a new episode starts within a context (T,) -> (E-1,)."""
    return np.flatnonzero(np.diff(episode)) + 1


EVENT_COLOURS = {"reward": "#ff7f0e", "key": "#d4a017", "door": "#2ca02c"}  # information_events kinds


def _step_axis(ax, record: AttentionRecord, sample: int, axis: str = "x") -> None:
    """Ticks at episode starts (and the last token) labelled with stream steps; dashed episode boundaries;
    triangles under the x axis at the transitions that carry the task's information (rewards;
    Key-to-Door's key and door events, see :func:`information_events`).

    Marks drawn by an earlier call on the same axes are replaced, so a figure can be redrawn in place.
    """
    positions, episode = record.tokens["positions"][sample], record.tokens["episode"][sample]
    T, starts = len(positions), _boundaries(episode)
    inner = starts[(starts > T // 20) & (starts < T - 1 - T // 20)]  # not crowding the first and last ticks
    ticks = np.concatenate([[0], inner, [T - 1]])
    for old in [line for line in ax.lines if line.get_gid() in ("episode boundary", "event")]:
        old.remove()
    events = information_events(record.meta["env"], record.tokens["rewards"][sample, :-1],
                                record.tokens["step"][sample, :-1])
    if "key" in events:  # a reward marked as key or door is drawn as that only
        events["reward"] = events["reward"] & ~events["key"] & ~events["door"]
    for kind, mask in events.items():
        if mask.any():
            ax.plot(np.flatnonzero(mask), np.zeros(mask.sum()), ls="", marker="^", ms=5, color=EVENT_COLOURS[kind],
                    transform=ax.get_xaxis_transform(), clip_on=False, gid="event", label=f"{kind} (mark)")
    for name in axis:
        getattr(ax, f"set_{name}ticks")(ticks, [str(positions[t]) for t in ticks], fontsize=7)
        line = ax.axvline if name == "x" else ax.axhline
        for s in starts:
            line(s - 0.5, color="0.3", ls="--", lw=0.7, gid="episode boundary")


def _vmax(patterns: np.ndarray) -> float:
    """Top of the colour scale: the 99th percentile of the visible (causal) weights.

    The first query rows see one or two keys and hold weights near 1; scaling to them
    would wash out every later row.
    """
    rows, cols = np.tril_indices(patterns.shape[-1])
    visible = patterns[..., rows, cols]  # (..., T(T+1)/2)
    return float(np.quantile(visible, 0.99)) or 1.0


def _title(record: AttentionRecord, sample: int) -> str:
    s = record.samples
    what = (f"trajectory {s['trajectory'][sample]}, decision {s['decision'][sample]}" if record.source == "rollout"
            else f"sample {sample} (decision at step {s['decision'][sample]})")
    return f"{what}, task {tuple(int(v) for v in s['task'][sample])}"


# ---- the original set -------------------------------------------------------------------------------


def plot_heatmaps(record: AttentionRecord, sample: int, layer: int, fig=None):
    """Per-head heatmaps of one sample and layer (2 rows beyond 2 heads, as the original), one colour scale.

    ``fig``: a figure an earlier call made for this record, redrawn in place (about half
    the cost of a new one: the figure set draws 20 of these).
    """
    heads = record.heads
    if fig is None:
        rows = 2 if len(heads) > 2 else 1
        cols = -(-len(heads) // rows)
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols + 1.2, 4.0 * rows + 0.4), squeeze=False,
                                 sharex=True, sharey=True)  # one sample: the same steps on every panel
        fig.subplots_adjust(left=0.09, right=0.86, bottom=0.08, top=0.9, wspace=0.32, hspace=0.38)
        for ax in axes.flat[len(heads):]:
            ax.remove()
        for ax in axes[-1]:
            ax.set_xlabel("key: transition (stream step)")
        for ax in axes[:, 0]:
            ax.set_ylabel("query token (stream step)")
        empty = np.zeros((record.seq_len, record.seq_len))
        images = [ax.imshow(empty, cmap=CMAP, interpolation="nearest") for ax in axes.flat[:len(heads)]]
        fig.colorbar(images[-1], ax=axes.ravel().tolist(), fraction=0.03, pad=0.03, extend="max", label="attention")
    patterns = record.layer(layer)[sample]  # (heads, T, T)
    vmax = _vmax(patterns)
    for ax, head, pattern in zip(fig.axes, heads, patterns):
        ax.images[0].set_data(pattern)
        ax.images[0].set_clim(0, vmax)
        _step_axis(ax, record, sample, "xy")
        ax.set_title(f"head {head}", y=TITLE_Y)
    fig.suptitle(f"Attention heatmap, layer {layer}: {_title(record, sample)}", fontsize=11)
    return fig


def received_attention(pattern: np.ndarray) -> np.ndarray:
    """Mean attention each key receives from the queries that can see it: (T, T) -> (T,).

    Under the causal mask key j is seen by queries j..T-1, so the plain column mean
    (the original's) would favour early keys by construction.
    """
    T = pattern.shape[-1]
    return pattern.sum(-2) / (T - np.arange(T))


def plot_lines(record: AttentionRecord, sample: int, layer: int, fig=None):
    """Left: the query row (heads averaged); right: mean attention received per key.

    ``fig``: a figure an earlier call made for this record, redrawn in place.
    """
    pattern = record.pattern(layer, sample)  # (T, T)
    T = pattern.shape[-1]
    rewarded = np.flatnonzero(record.tokens["rewards"][sample] > 0)
    if fig is None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
        left.plot(np.arange(T), np.zeros(T), marker="o", lw=1.5, ms=3)
        left.scatter([], [], marker="*", s=60, color="tab:green", zorder=3, label="rewarded transition")
        left.set_title("Query token attention to history", y=TITLE_Y)
        left.set_ylabel("attention weight")
        right.stairs(np.zeros(T), np.arange(T + 1) - 0.5, fill=True, color="steelblue", alpha=0.8)
        right.set_title("Average attention to each position", y=TITLE_Y)
        right.set_ylabel("mean attention from later queries")
        for ax in (left, right):
            ax.axvline(T - 1, color="r", ls="--", alpha=0.7, label="query position")
            ax.set_xlabel("context position (stream step)")
            ax.grid(alpha=0.3)
    left, right = fig.axes
    left.lines[0].set_ydata(pattern[-1])
    left.collections[0].set_offsets(np.column_stack([rewarded, pattern[-1, rewarded]]))
    right.patches[0].set_data(received_attention(pattern))
    for ax in (left, right):
        _step_axis(ax, record, sample)
        ax.relim()
        ax.autoscale_view()
    left.legend(fontsize=8)  # with this sample's event marks (key, door, reward) under the axis
    fig.suptitle(f"Attention patterns, layer {layer}: {_title(record, sample)}", fontsize=11)
    return fig


SUMMARY = (("mean_context_attention", "Mean context attention", "steelblue"),
           ("std_context_attention", "Attention concentration (std dev)", "coral"),
           ("attention_entropy", "Attention entropy (nats)", "mediumseagreen"),
           ("recent_to_distant_ratio", "Recent/distant attention ratio", "mediumpurple"))


def plot_summary(stats: dict[str, np.ndarray], layer: int):
    """The original's four histograms across samples for one layer (``layer_stats(record)[layer]``)."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, label, color) in zip(axes.flat, SUMMARY):
        values = np.asarray(stats[key], dtype=float)
        ax.hist(values, bins=30, color=color, alpha=0.75, histtype="stepfilled", edgecolor="black")
        ax.axvline(values.mean(), color="r", ls="--", label=f"mean {values.mean():.4g}")
        if key == "attention_entropy":
            ne = np.asarray(stats["normalized_entropy"]).mean()
            ax.plot([], [], " ", label=f"normalised {ne:.3f}")
        ax.set(xlabel=label, ylabel="samples")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Attention pattern statistics, layer {layer} ({len(values)} samples)", fontsize=11)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.92, wspace=0.25, hspace=0.3)
    return fig


# ---- additions ----------------------------------------------------------------------------------------

GRID = (("normalized_entropy", "normalised entropy"), ("mean_attention_distance", "mean distance (steps)"),
        ("sink_mass", "sink mass (key 0)"), ("recent_to_distant_ratio", "recent/distant ratio"))


def plot_stat_grid(record: AttentionRecord):
    """Layer x head grids of per-head statistics, averaged over samples (:func:`adkit.analysis.metrics.stats_table`)."""
    table = pd.DataFrame(stats_table(record.patterns))
    fig, axes = plt.subplots(1, len(GRID), figsize=(3.3 * len(GRID), 0.6 * len(record.layers) + 2.2))
    for ax, (key, label) in zip(axes, GRID):
        grid = table.pivot_table(index="layer", columns="head", values=key, aggfunc="mean").to_numpy()
        ax.imshow(grid, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w")
        ax.set_xticks(range(len(record.heads)), record.heads)
        ax.set_yticks(range(len(record.layers)), record.layers)
        ax.set(title=label, xlabel="head", ylabel="layer")
    fig.suptitle(f"Per-head statistics of the query row, mean over {record.n_samples} samples", fontsize=11)
    fig.tight_layout()
    return fig


def plot_episode_mass(record: AttentionRecord, profile: np.ndarray | None = None):
    """Attention mass per episode back from the query, per layer, against uniform attention."""
    profile = episode_profile(record) if profile is None else profile  # (layers, E)
    episode = record.tokens["episode"]
    back = episode[:, -1:] - episode[:, :-1]  # (B, T-1)
    T = record.seq_len
    uniform = np.stack([(back == e).sum(1) / T for e in range(profile.shape[1])], 1).mean(0)  # (E,) mass if uniform
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(profile.shape[1])
    for row, layer in zip(profile, record.layers):
        ax.plot(x, row, marker="o", label=f"layer {layer}")
    ax.plot(x, uniform, color="0.5", ls=":", label="uniform attention")
    ax.set_xticks(x, ["current"] + [f"-{e}" for e in x[1:]])
    ax.set(xlabel="episode in context (relative to the query's)", ylabel="attention mass (heads averaged)",
           title=f"Attention by episode, {record.n_samples} contexts")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


KEEP_COLORS = {"recency": "tab:blue", "top-k": "tab:red"}  # budget coverage: the keep rules' colours


def plot_budget_coverage(coverage: pd.DataFrame):
    """Share of the query's attention that K kept transitions hold against K, a panel per kind (``all``, then
    each kind of task information): the last K and each query's top K per layer (thin; their layer mean
    thick), K at random (dotted). ``coverage``: :func:`adkit.analysis.insights.budget_coverage`."""
    kinds = list(dict.fromkeys(coverage["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        part = coverage[coverage["kind"] == kind]
        for keep, color in KEEP_COLORS.items():
            mine = part[part["keep"] == keep]
            for _, layer in mine.groupby("layer"):
                ax.plot(layer["budget"], layer["share"], color=color, lw=0.8, alpha=0.5)
            mean = mine.groupby("budget")["share"].mean()
            ax.plot(mean.index, mean.values, color=color, lw=2.5, marker="o", label=f"{keep} (layer mean)")
        rand = part[part["keep"] == "random"].groupby("budget")["share"].mean()
        ax.plot(rand.index, rand.values, color="0.4", ls=":", label="random (K / n)")
        ax.set(xscale="log", xlabel="transitions kept (K)", ylim=(-0.02, 1.02),
               title="all of it" if kind == "all" else f"on {kind} transitions")
        ax.minorticks_off()
        ax.set_xticks(rand.index, [str(k) for k in rand.index])
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("share of the query's attention held")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("What a budget keeps of the attention (thin: one layer)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_rollout(record: AttentionRecord, sample: int):
    """Attention rollout across all layers for one sample, and its query row against the last layer's."""
    rollout = attention_rollout(record.patterns[:, sample])  # (T, T)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3), gridspec_kw={"width_ratios": [1, 1.4]})
    im = left.imshow(rollout, cmap=CMAP, vmin=0, vmax=_vmax(rollout), interpolation="nearest")
    fig.colorbar(im, ax=left, fraction=0.046, extend="max")
    _step_axis(left, record, sample, "xy")
    left.set(title="attention rollout (all layers)", xlabel="key transition (stream step)", ylabel="query token")
    last = record.pattern(record.layers[-1], sample)[-1]
    right.plot(rollout[-1], marker="o", ms=3, label="rollout")
    right.plot(last, marker=".", ms=3, alpha=0.7, label=f"layer {record.layers[-1]} (heads averaged)")
    _step_axis(right, record, sample)
    right.set(title="query row", xlabel="key transition (stream step)", ylabel="attention")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"Attention rollout: {_title(record, sample)}", fontsize=11)
    fig.tight_layout()
    return fig


def plot_trajectory(record: AttentionRecord, trajectory: int, layer: int, head: int | None = None):
    """One trajectory's query rows at its decision steps: attention from exploration to exploitation.

    Rows are decisions (oldest at the top), columns transitions back from the decision;
    green dots mark rewarded transitions.
    """
    idx = record.trajectory(trajectory)
    rows = np.stack([record.pattern(layer, b, head)[-1] for b in idx])  # (D, T)
    T = rows.shape[1]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(idx) + 1.8))
    im = ax.imshow(rows, cmap=CMAP, aspect="auto", interpolation="nearest")  # scaled to this trajectory
    fig.colorbar(im, ax=ax, fraction=0.03, label="attention")
    d, j = np.nonzero(record.tokens["rewards"][idx] > 0)
    ax.scatter(j, d, s=8, color="tab:green", label="rewarded transition")
    back = np.arange(T)[::-1]  # key j is T-1-j transitions back
    ticks = np.arange(0, T, max(1, T // 10))
    ax.set_xticks(ticks, [str(back[t]) for t in ticks])
    ax.set_yticks(range(len(idx)), [str(record.samples["decision"][b]) for b in idx], fontsize=7)
    which = "heads averaged" if head is None else f"head {head}"
    ax.set(xlabel="transitions back from the decision (0 = the query's own token)", ylabel="decision step",
           title=f"Trajectory {trajectory}, layer {layer} ({which}): query attention along the rollout")
    if len(d):  # above the rows, never over them
        ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_ablation(result: AblationResult):
    """KL and action agreement after dropping top-attended vs random transitions; attention vs importance."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    k = result.drop_counts
    for name, style in (("attention", "o-"), ("random", "s--")):
        label = "most-attended" if name == "attention" else "random"
        axes[0].plot(k, np.maximum(result.kl[name], 1e-12), style, label=label)
        axes[1].plot(k, result.agreement[name], style, label=label)
    axes[0].set(yscale="log", xlabel="transitions dropped", ylabel="KL(full || dropped)",
                title="action distribution shift")
    axes[1].set(xlabel="transitions dropped", ylabel="argmax action unchanged", ylim=(-0.02, 1.02),
                title="action agreement")
    imp, att = np.asarray(result.importance).ravel(), np.asarray(result.scores["attention"]).ravel()
    axes[2].scatter(att, np.maximum(imp, 1e-12), s=6, alpha=0.4)
    rho = ", ".join(f"{n} {np.nanmean(v):.2f}" for n, v in result.spearman.items())
    axes[2].set(yscale="log", xlabel=f"attention (layer {result.layer}, heads averaged)",
                ylabel="leave-one-out KL", title=f"Spearman: {rho}")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Does attention predict importance?", fontsize=11)
    fig.tight_layout()
    return fig


# ---- saving ---------------------------------------------------------------------------------------------


def _save(fig, path: Path, dpi: int, close: bool = True) -> Path:
    """Save a PNG (fast zlib level: the figure set is 44 files) and close the figure unless reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})
    if close:
        plt.close(fig)
    return path


def save_original_set(record: AttentionRecord, figs_root: str | Path, samples: int | Sequence[int] = 5,
                      layers: Sequence[int] | None = None, dpi: int = DPI, stats: dict | None = None) -> list[Path]:
    """The original toolkit's figures, same names, under ``figs_root/attention/layer_{l}/``.

    ``samples``: a count (the first ones) or sample indices; ``stats``: ``layer_stats(record)``
    if already computed. Returns the paths written.
    """
    chosen = range(min(samples, record.n_samples)) if isinstance(samples, int) else samples
    stats = stats or layer_stats(record)
    paths, heat, lines = [], None, None  # one heatmap and one line figure, redrawn for every sample
    for layer in layers or record.layers:
        out = Path(figs_root) / "attention" / f"layer_{layer}"
        for i in chosen:
            heat, lines = plot_heatmaps(record, i, layer, heat), plot_lines(record, i, layer, lines)
            paths.append(_save(heat, out / f"attention_heatmap_sample{i}_layer{layer}.png", dpi, close=False))
            paths.append(_save(lines, out / f"attention_lines_sample{i}_layer{layer}.png", dpi, close=False))
        paths.append(_save(plot_summary(stats[layer], layer), out / f"attention_summary_layer{layer}.png", dpi))
    for fig in (heat, lines):
        if fig is not None:
            plt.close(fig)
    return paths


def save_figures(record: AttentionRecord, figs_root: str | Path, ablation: AblationResult | None = None,
                 samples: int = 5, dpi: int = DPI, coverage: pd.DataFrame | None = None) -> list[Path]:
    """The original set plus the statistics grid, episode mass, rollout map(s), trajectories, ablation
    and budget coverage (``coverage``, :func:`adkit.analysis.insights.budget_coverage`)."""
    root = Path(figs_root) / "attention"
    paths = save_original_set(record, figs_root, samples, dpi=dpi)
    paths.append(_save(plot_stat_grid(record), root / "stats_grid.png", dpi))
    paths.append(_save(plot_episode_mass(record), root / "episode_mass.png", dpi))
    full = list(record.layers) == list(range(record.meta.get("n_layer", len(record.layers))))
    if full:
        paths.append(_save(plot_rollout(record, 0), root / "rollout_sample0.png", dpi))
    if record.source == "rollout":
        for layer in record.layers:
            paths.append(_save(plot_trajectory(record, 0, layer), root / f"trajectory0_layer{layer}.png", dpi))
    if ablation is not None:
        paths.append(_save(plot_ablation(ablation), root / "ablation.png", dpi))
    if coverage is not None:
        paths.append(_save(plot_budget_coverage(coverage), root / "budget_coverage.png", dpi))
    return paths


# ---- the explorer ---------------------------------------------------------------------------------------


def draw_explorer(fig: Figure, record: AttentionRecord, layer: int, head: int, sample: int, decision: int) -> Figure:
    """Draw one pattern (``head`` < 0: heads averaged) and its query row into ``fig``.

    ``sample`` is a trajectory (for window records every window is its own trajectory)
    and ``decision`` the index of a decision step along it.
    """
    idx = record.trajectory(sample)
    b = int(idx[min(decision, len(idx) - 1)])
    pattern = record.pattern(layer, b, None if head < 0 else head)  # (T, T)
    fig.clear()
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    left.imshow(pattern, cmap=CMAP, vmin=0, vmax=_vmax(pattern), interpolation="nearest")
    _step_axis(left, record, b, "xy")
    left.set(xlabel="key transition (stream step)", ylabel="query token")
    T = pattern.shape[-1]
    rewarded = np.flatnonzero(record.tokens["rewards"][b] > 0)
    right.stairs(pattern[-1], np.arange(T + 1) - 0.5, fill=True, color="steelblue")
    right.scatter(rewarded, pattern[-1, rewarded], marker="*", s=50, color="tab:green", zorder=3,
                  label="rewarded transition")
    _step_axis(right, record, b)
    right.set(xlabel="key transition (stream step)", ylabel="query attention")
    if len(rewarded):
        right.legend(fontsize=8)
    which = "heads averaged" if head < 0 else f"head {head}"
    fig.suptitle(f"layer {layer}, {which} | {_title(record, b)}", fontsize=10)
    return fig


def explorer(record: AttentionRecord, layer: int | None = None, head: int = -1, sample: int = 0,
             decision: int = 0):
    """Sliders for layer, head (-1: mean), sample (trajectory) and decision that redraw from the record.

    Returns ``(box, draw)`` as :func:`adkit.plots.widget_panel` does (the sliders are
    ``draw.widgets``). Moving a slider redraws and shows the figure; no model is run.
    """
    layer = record.layers[-1] if layer is None else layer
    steps = [str(record.samples["decision"][b]) for b in record.trajectory(0)]
    sliders = {
        "layer": w.SelectionSlider(options=list(record.layers), value=layer, description="layer"),
        "head": w.SelectionSlider(options=[("mean", -1)] + [(str(h), h) for h in record.heads], value=head,
                                  description="head"),
        "sample": w.IntSlider(value=sample, min=0, max=record.n_trajectories - 1, description="sample"),
        "decision": w.SelectionSlider(options=[(s, i) for i, s in enumerate(steps)],
                                      value=min(decision, len(steps) - 1), description="decision"),
    }
    if len(steps) == 1:  # window records: one decision per sample, no slider to show
        sliders["decision"].layout.display = "none"
    for s in sliders.values():
        s.continuous_update = False

    def follow_sample(change) -> None:  # the decision slider lists the chosen trajectory's own steps
        steps = [str(record.samples["decision"][b]) for b in record.trajectory(change["new"])]
        d = sliders["decision"]
        index = d.value
        d.options = [(s, i) for i, s in enumerate(steps)]
        d.value = min(index, len(steps) - 1)
        d.layout.display = "none" if len(steps) == 1 else None  # a window has one decision: nothing to move

    sliders["sample"].observe(follow_sample, names="value")  # before the panel's redraw
    return widget_panel(Figure(figsize=(11, 4.2), layout="constrained"), sliders,
                        lambda fig, **values: draw_explorer(fig, record, **values))
