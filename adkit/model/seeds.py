"""One recipe, several training seeds: train and evaluate each, then mean and spread over them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from adkit.data.histories import Histories
from adkit.io import write_text
from adkit.model.checkpoint import load
from adkit.model.evaluate import RolloutResult, evaluate_run, seed_table
from adkit.model.train import train
from adkit.run import Run


def train_and_evaluate(run: Run, h: Histories, progress: bool = True, **train_kw) -> RolloutResult:
    """Train (or resume) ``run``, then let it learn in context on the held-out tasks
    (:func:`adkit.model.evaluate.evaluate_run`). ``train_kw`` go to :func:`adkit.model.train.train`."""
    train(run, h, progress=progress, **train_kw)
    return evaluate_run(run, load(run.weights), progress)


def train_seeds(run: Run, h: Histories, first: RolloutResult, progress: bool = True
                ) -> tuple[dict[int, RolloutResult], pd.DataFrame]:
    """Train and evaluate ``train.extra_seeds`` beside ``run`` (whose evaluation is ``first``), each in
    ``run.seed_run(seed)``; write ``eval/seeds.csv`` (one row per seed, then mean and sample std).
    Returns the results by seed and the table."""
    results = {run.cfg.train.seed: first}
    for seed in run.cfg.train.extra_seeds:
        results[seed] = train_and_evaluate(run.seed_run(seed), h, progress)
    table = seed_table(results)
    write_text(run.seeds_table, table.to_csv())
    return results, table


def seed_curves(results: dict[int, RolloutResult]) -> np.ndarray:
    """``(training seeds, episodes)``: each seed's mean return per episode over tasks and evaluation seeds."""
    return np.stack([r.returns.mean((0, 1)) for r in results.values()])
