"""Study tables summarised: per compressor x budget (x mode), mean and sample std (ddof=1) over seeds;
and over training seeds (:func:`over_seeds`), the table a study's figure across seeds is drawn from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adkit.io import atomic_path
from adkit.study.cells import share

TRAINING_FREE, RETRAINED = "training-free", "retrained"  # the two modes of the study
BASELINES = ("none", "full")  # full context: rolling cache / re-encoded every step (budget = n_transit)
BASELINE_KV = {"none": "cache", "full": "recompute"}  # the baselines' backends, in the kv column


def with_kv(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``kv`` column: tables written before it re-encoded every compressed context."""
    if "kv" in df.columns:
        return df
    return df.assign(kv=[BASELINE_KV.get(c, "reencode") for c in df["compressor"]])


def upgrade_table(path: Path, columns) -> None:
    """Rewrite a study table written before the ``kv`` column (:func:`with_kv`) or the retrained ``init``
    column (every model then trained from scratch) with them, atomically."""
    if path.exists():
        df = pd.read_csv(path)
        if not set(columns) <= set(df.columns):
            if "init" not in df.columns:
                df = df.assign(init="scratch")
            with atomic_path(path) as tmp:
                with_kv(df)[list(columns)].to_csv(tmp, index=False)


def plus_minus(mean: pd.Series, std: pd.Series, fmt: str, unit: str = "") -> list[str]:
    """``"mean ± std"`` strings, one per row, formatted with ``fmt``."""
    return [f"{m:{fmt}} ± {sd:{fmt}}{unit}" for m, sd in zip(mean, std)]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per compressor x budget x kv: means (and std over seeds) of return, share of the full-context
    return (on the same protocol), agreement, KL and cost; baselines first, then by budget
    (largest first) and share (best first)."""
    df = with_kv(df).assign(share=share(df))
    g = df.groupby(["compressor", "budget", "kv"])
    out = g.agg(seeds=("seed", "nunique"), tasks=("tasks", "first"), episodes=("episodes", "first"),
                return_mean=("return", "mean"), return_std=("return", "std"), share_mean=("share", "mean"),
                share_std=("share", "std"), agreement=("agreement", "mean"), kl=("kl", "mean"),
                context_tokens=("context_tokens", "mean"), rollout_step_ms=("rollout_step_ms", "mean"),
                decision_ms=("decision_ms", "mean"), peak_mem_mb=("peak_mem_mb", "mean"), note=("note", "first"))
    out = out.reset_index().fillna({"return_std": 0.0, "share_std": 0.0})
    out["rank"] = [BASELINES.index(c) if c in BASELINES else len(BASELINES) for c in out["compressor"]]
    out = out.sort_values(["rank", "budget", "share_mean"], ascending=[True, False, False])
    return out.drop(columns="rank").reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per compressor x budget x mode x kv: return and share of the full-context return (mean and
    std over seeds), and the mean costs; budgets largest first, best share first."""
    df = with_kv(df).assign(share=share(df))
    g = df.groupby(["compressor", "budget", "mode", "kv"])
    out = g.agg(seeds=("seed", "nunique"), return_mean=("return", "mean"), return_std=("return", "std"),
                share_mean=("share", "mean"), share_std=("share", "std"), train_step_ms=("train_step_ms", "mean"),
                train_peak_mem_mb=("train_peak_mem_mb", "mean"), rollout_step_ms=("rollout_step_ms", "mean"),
                decision_ms=("decision_ms", "mean"), peak_mem_mb=("peak_mem_mb", "mean"),
                flops=("flops", "mean")).reset_index()
    out = out.fillna({"return_std": 0.0, "share_std": 0.0})
    out["rank"] = (out["compressor"] != "none").astype(int)
    out = out.sort_values(["rank", "budget", "mode", "share_mean"], ascending=[True, False, True, False])
    return out.drop(columns="rank").reset_index(drop=True)


# what tells the parts of a study apart: its mode, how the context is kept, and how a retrained model was trained
# (fine-tuned from the run's model, or from scratch; re-encoded at the full model's action targets per step or not)
PART = ["mode", "kv", "fine_tuned", "equal_targets"]
OVER_SEEDS = [*PART, "compressor", "budget", "seeds", "mean", "std", "low", "high"]


def over_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Shares over training seeds, per part of the study (mode, kv, fine-tuned or not) x compressor x
    budget: ``seeds`` counted, share ``mean``, sample ``std`` (ddof=1) and min-max (``low``, ``high``);
    training-free parts first, fine-tuned before from scratch; per part, budgets largest first and the
    best share first.

    ``df``: a row per cell and training seed with ``compressor``, ``budget``, ``mode``, ``kv`` and
    ``share`` (a fraction of that seed's full-context return); retrained rows whose ``init`` is ``run``
    were fine-tuned from the run's model, those with a true ``equal_targets`` (where the column exists)
    trained on as many action targets per step as the full-context model. The result is small and
    self-contained: keep it next to the figure (:func:`adkit.study.figures.plot_shares_over_seeds`) to
    redraw it without the runs.
    """
    init = df["init"] if "init" in df.columns else pd.Series("", index=df.index)
    df = with_parts(df).assign(fine_tuned=(df["mode"] == RETRAINED) & (init == "run"))
    g = df.groupby([*PART, "compressor", "budget"])["share"]
    out = g.agg(seeds="count", mean="mean", std="std", low="min", high="max").reset_index()
    out = out.sort_values([*PART, "budget", "mean"], ascending=[False, True, False, True, False, False])
    return out[OVER_SEEDS].reset_index(drop=True)


def with_parts(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (:func:`over_seeds`, or several concatenated) with every :data:`PART` column filled: a
    table saved before ``equal_targets`` existed had no such cells."""
    equal = table["equal_targets"] if "equal_targets" in table.columns else pd.Series(False, index=table.index)
    return table.assign(equal_targets=equal.fillna(False).astype(bool))


def part_label(mode: str, kv: str, fine_tuned: bool, equal_targets: bool = False) -> str:
    """A part of the study (:data:`PART`) as tables, verdicts and figure panels name it, e.g.
    ``training-free, kv: evict``, ``retrained (fine-tuned), kv: evict``, ``retrained (from scratch,
    equal targets), kv: reencode``."""
    how = "fine-tuned" if fine_tuned else "from scratch" if mode == RETRAINED else ""
    how += ", equal targets" if equal_targets else ""
    return f"{mode}{f' ({how})' if how else ''}, kv: {kv}"


def by_budget(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per part of the study in ``table`` (:func:`over_seeds`, named by :func:`part_label`): a strategy x
    budget table of ``"mean ± std% (low-high)"`` shares, a column ``strategy`` and one per budget, largest
    first; strategies in the table's order (best first at the largest budget); the baselines left out."""
    table = with_parts(table)
    cells = table[~table["compressor"].isin(BASELINES)]
    out = {}
    for key, g in cells.groupby(PART, sort=False):
        text = [f"{pm} ({100 * lo:.1f}-{100 * hi:.1f})"
                for pm, lo, hi in zip(plus_minus(100 * g["mean"], 100 * g["std"], ".1f", "%"), g["low"], g["high"])]
        grid = g.assign(text=text).pivot(index="compressor", columns="budget", values="text")
        grid = grid[sorted(grid.columns, reverse=True)].reindex(list(dict.fromkeys(g["compressor"]))).fillna("")
        out[part_label(*key)] = grid.rename(columns=lambda b: f"K = {b}").rename_axis(None, axis=1).rename_axis(
            "strategy").reset_index()
    return out


def verdicts(table: pd.DataFrame, recommended: str) -> list[str]:
    """A line per part of the study and budget in ``table`` (:func:`over_seeds`): the best strategy, and
    whether ``recommended`` beats ``random`` by more than the spread (the larger of their sample stds)."""
    lines = []
    table = with_parts(table)
    strategies = table[~table["compressor"].isin(BASELINES)]
    for (*part, budget), g in strategies.groupby([*PART, "budget"], sort=False):
        best = g.loc[g["mean"].idxmax()]
        line = (f"K={budget} ({part_label(*part)}): best `{best['compressor']}` "
                f"{100 * best['mean']:.1f} ± {100 * best['std']:.1f}% "
                f"({100 * best['low']:.1f}-{100 * best['high']:.1f}%)")
        mine, rand = g[g["compressor"] == recommended], g[g["compressor"] == "random"]
        if len(mine) and len(rand):
            ours, theirs = mine.iloc[0], rand.iloc[0]
            margin, spread = ours["mean"] - theirs["mean"], np.max([ours["std"], theirs["std"]])  # NaN: one seed
            line += f"; recommended `{recommended}` {100 * ours['mean']:.1f}% vs random {100 * theirs['mean']:.1f}%: "
            if np.isnan(spread):
                line += f"{100 * margin:+.1f} points, one seed: no spread to compare with"
            else:
                line += (f"{'beats' if margin > spread else 'does NOT beat'} random by more than the spread "
                         f"({100 * margin:+.1f} vs {100 * spread:.1f} points)")
        lines.append(line)
    return lines
