"""Figures shared by the CLI, the notebooks and the report (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from matplotlib.figure import Figure

from adkit.io import atomic_path


def band(ax, x, runs: np.ndarray, label: str, color=None):
    """Mean line and +-1 sample std (ddof=1) band over the first axis of ``runs`` (n_runs, n_points)."""
    mean = runs.mean(0)
    std = runs.std(0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    line, = ax.plot(x, mean, label=label, color=color, lw=2)
    if len(runs) > 1:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    return line


def source_bands(ax, source: np.ndarray, name: str = "source", stride: int = 1) -> None:
    """The source's per-stream curve ``(n_streams, n_episodes)``; with ``stride > 1`` also every
    ``stride``-th episode of it, which is what AD trained with ``train.episode_stride`` saw."""
    band(ax, np.arange(1, source.shape[-1] + 1), source, f"{name} (per stream)", color="tab:gray")
    if stride > 1:
        thinned = source[:, ::stride]  # (n_streams, n_episodes / stride)
        band(ax, np.arange(1, thinned.shape[-1] + 1), thinned, f"{name}, one episode in {stride} (AD's data)",
             color="tab:olive")


def plot_source(h, tasks, stride: int = 1, random: float | None = None, title: str = "source histories",
                optimal: float | None = None):
    """The source's mean return per episode over its history, on all tasks and on ``tasks`` (the
    held-out ones); with ``stride > 1`` the episodes AD trains on; ``random`` and ``optimal``: the
    random and the optimal policy's returns (on ``tasks``)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    src = h.task_returns(tasks)  # (tasks x streams, episodes)
    ax.plot(h.episode_returns().mean((0, 1)), label=f"{h.source}, all tasks")
    ax.plot(src.mean(0), label=f"{h.source}, held-out tasks")
    if stride > 1:
        ax.plot(range(0, src.shape[1], stride), src[:, ::stride].mean(0), "o", ms=3,
                label=f"one episode in {stride} (AD's data)")
    if random is not None:
        ax.axhline(random, color="tab:red", ls=":", label="random (held-out)")
    if optimal is not None:
        ax.axhline(optimal, color="k", ls="--", lw=0.8, label="optimal (held-out)")
    ax.set(xlabel="episode of the learning history", ylabel="return", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_curves(res, source: np.ndarray | None = None, random: float | None = None, title: str = "",
                extra: dict[str, np.ndarray] | None = None, ax=None, stride: int = 1,
                label: str | None = "AD (in context)"):
    """Return per episode: AD (mean +- std over seeds of the task-mean), source, random, optimal.

    ``source``: (n_streams, n_episodes) the source algorithm's per-stream returns on the same
    tasks (``stride``: AD's ``train.episode_stride``, see :func:`source_bands`); ``extra``: more
    labelled (n_runs, n_episodes) curves (e.g. other training seeds); ``label=None`` leaves out
    the curve of ``res`` itself (its optimum is still drawn).
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    if label is not None:
        episodes = np.arange(1, res.returns.shape[-1] + 1)
        band(ax, episodes, res.returns.mean(0), label)  # (n_seeds, n_episodes)
    for label, runs in (extra or {}).items():
        band(ax, np.arange(1, runs.shape[-1] + 1), runs, label)
    if source is not None:
        source_bands(ax, source, stride=stride)
    if random is not None:
        ax.axhline(random, color="tab:red", ls=":", label=f"random ({random:.2f})")
    ax.axhline(res.optimal.mean(), color="k", ls="--", label=f"optimal ({res.optimal.mean():.2f})")
    ax.set(xlabel="episode in context", ylabel="return", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_train_log(log, ax=None):
    """Train/validation loss and validation accuracy from a ``train_log.csv`` DataFrame."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.5))
    ax.plot(log["step"], log["train_loss"], label="train loss")
    ax.plot(log["step"], log["val_loss"], label="validation loss")
    ax.set(xlabel="step", ylabel="cross-entropy")
    ax2 = ax.twinx()
    ax2.plot(log["step"], log["val_acc"], color="tab:green", ls="--", label="validation accuracy")
    ax2.set_ylabel("action accuracy")
    fig.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def save_png(fig: Figure, path, dpi: int = 120):
    """Write ``fig`` as a PNG at ``path`` atomically (a crash leaves the previous file whole) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def widget_panel(fig: Figure, widgets: dict, draw_into: Callable[..., Figure]):
    """Widgets over an output area that redraw ``fig`` whenever one of them changes.

    ``draw_into(fig, **values)`` draws one state, with one keyword per widget name.
    Returns ``(box, draw)``: the widget box, and ``draw(**values) -> Figure``, which
    draws the widget values (overridden by any given) without touching the widgets;
    ``draw.figure`` and ``draw.widgets`` expose both. Headless, display ``draw()``
    instead of the box.
    """
    out = w.Output()

    def draw(**values) -> Figure:
        return draw_into(fig, **{name: values.get(name, wd.value) for name, wd in widgets.items()})

    def redraw(_change=None) -> None:
        draw()
        with out:
            out.clear_output(wait=True)
            display(fig)

    for wd in widgets.values():
        wd.observe(redraw, names="value")
    draw.figure, draw.widgets = fig, widgets
    redraw()
    return w.VBox([w.HBox(list(widgets.values())), out]), draw


def draw_task_curves(fig: Figure, res, task: str) -> Figure:
    """Into ``fig``: the return per episode of each evaluation seed on one task (``"row,col"``)."""
    names = [",".join(map(str, t)) for t in res.tasks]
    i = names.index(task)
    fig.clear()
    ax = fig.subplots()
    ax.plot(np.arange(1, res.returns.shape[-1] + 1), res.returns[i].T, alpha=0.6)
    ax.axhline(res.optimal[i], ls="--", color="k", label="optimal")
    ax.set(xlabel="episode in context", ylabel="return", title=f"task {task}: each line one evaluation seed")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def task_explorer(res, task: str | None = None):
    """A task dropdown over :func:`draw_task_curves`; returns ``(box, draw)`` as :func:`widget_panel` does."""
    names = [",".join(map(str, t)) for t in res.tasks]
    widgets = {"task": w.Dropdown(options=names, value=task or names[0], description="task")}
    return widget_panel(Figure(figsize=(7, 3.5), layout="constrained"), widgets,
                        lambda fig, **values: draw_task_curves(fig, res, **values))
