"""Study tables summarised: per compressor x budget (x mode), mean and sample std (ddof=1) over seeds."""

from __future__ import annotations

from pathlib import Path

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
