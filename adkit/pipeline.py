"""Stage helpers shared by the CLI and the notebooks: each reads the previous stage's files.

A missing upstream file raises :class:`MissingStage` naming the command (and the
notebook) that makes it, so any notebook can be re-run alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adkit import envs
from adkit.collect import collect_to_file, default_path
from adkit.config import Config, load_config
from adkit.evaluate import RolloutResult, rollout, summary
from adkit.histories import Histories, load
from adkit.model import load as load_model
from adkit.train import train


class MissingStage(FileNotFoundError):
    """An upstream file is missing; the message says which command or notebook makes it."""


def run_dir_for(cfg: Config, run_dir: str | Path | None = None) -> Path:
    return Path(run_dir) if run_dir else Path("runs") / cfg.profile


def ensure_histories(cfg: Config, path: str | Path | None = None, progress: bool = True) -> tuple[Histories, Path]:
    """Load the profile's histories, collecting them first if the file does not exist."""
    path = Path(path) if path else default_path(cfg)
    if not path.exists():
        collect_to_file(cfg, path, progress=progress)
    return load(path), path


def require(path: Path, made_by: str) -> Path:
    if not Path(path).exists():
        raise MissingStage(f"{path} does not exist yet; it is made by {made_by}")
    return Path(path)


def run_config(run_dir: str | Path) -> Config:
    """The resolved config saved next to a checkpoint."""
    path = require(Path(run_dir) / "config.yaml", f"`adkit train -c PROFILE --run-dir {run_dir}` (notebook 01_train)")
    return load_config(path)


def train_log(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(require(Path(run_dir) / "train_log.csv", "`adkit train` (notebook 01_train)"))


def source_returns(h: Histories, tasks) -> np.ndarray:
    """The source's per-stream episode returns on ``tasks`` ``(n_tasks * n_streams, n_episodes)``."""
    rows = h.task_index(tasks)
    ret = h.episode_returns()[rows]  # (n_tasks, n_streams, n_episodes)
    return ret.reshape(-1, ret.shape[-1])


def random_baseline(cfg: Config, tasks) -> float:
    """Mean return of the uniform-random policy over ``tasks`` (exact)."""
    return float(np.mean([envs.random_return(cfg.env.name, t) for t in tasks]))


def evaluate_run(cfg: Config, run_dir: str | Path, progress: bool = True) -> RolloutResult:
    """Let the model of ``run_dir`` learn in context on the held-out tasks with ``cfg.eval``;
    writes ``run_dir/eval/returns.csv``."""
    run_dir = Path(run_dir)
    _, test = envs.task_split(cfg.env.name, cfg.env.split_seed, cfg.env.train_ratio)
    res = rollout(load_model(run_dir), cfg.env.name, test, seeds=range(cfg.eval.seeds), episodes=cfg.eval.episodes,
                  greedy=cfg.eval.greedy, progress=progress)
    res.write_csv(run_dir / "eval" / "returns.csv")
    return res


def train_and_evaluate(cfg: Config, h: Histories, run_dir: str | Path, progress: bool = True,
                       **train_kw) -> RolloutResult:
    """Train (or resume) ``run_dir``, then :func:`evaluate_run`. ``train_kw`` go to :func:`adkit.train.train`."""
    train(cfg, h, run_dir, progress=progress, **train_kw)
    return evaluate_run(cfg, run_dir, progress)


def seed_table(results: dict[int, RolloutResult]) -> pd.DataFrame:
    """One row of :func:`adkit.evaluate.summary` per training seed, plus a ``mean`` and a ``std`` row."""
    table = pd.DataFrame([{"seed": seed, **summary(res)} for seed, res in results.items()]).set_index("seed")
    numbers = table.astype(float)
    return pd.concat([table, numbers.mean().to_frame("mean").T, numbers.std(ddof=0).to_frame("std").T])
