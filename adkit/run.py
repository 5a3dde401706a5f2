"""A run directory and every file in it: one object knows where each stage reads and writes.

Relative paths (run directories, histories, figures) resolve against the project
home (:mod:`adkit.paths`), not the working directory.

Layout of a run directory::

    config.yaml                        resolved config (adkit train)
    model.safetensors, model.json      checkpoint
    train_state.safetensors/.json      optimizer and sampler state, to resume
    train_log.csv                      loss and accuracy per validation step
    tensorboard/                       the same as TensorBoard event files (train.tensorboard)
    replicas.json                      parameter checksums of each process (under torchrun)
    eval/returns.csv, returns.png      in-context returns on held-out tasks (adkit evaluate)
    eval/summary.json                  returns and what a decision cost (ms, peak MB, FLOPs)
    eval/seeds.csv, returns_seeds.png  the same over training seeds (notebook 01)
    seeds/seed{S}/                     runs of the other training seeds
    attention/attention.h5             attention patterns (adkit attention)
    attention/insights.md, .json       metrics, recommendations, ablation check
    figs/attention/                    attention figures
    study/                             compression study tables and figures (adkit study)
    study/retrained/{name}-b{K}-s{S}/  one retrained cell (a run directory of its own; its returns.csv)
    notebooks/                         executed notebooks (adkit demo)

>>> run = Run.open("runs/quick")
>>> run.cfg.model.n_transit, run.weights, run.test_tasks[:2]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from adkit import envs
from adkit.config import Config, dataset_id, load_config
from adkit.paths import home, resolve

MAKERS = {  # what makes each stage's files: named in MissingStage messages
    "train": "`adkit train -c {profile} --run-dir {run}` (notebook 01_train)",
    "collect": "`adkit collect -c {profile}` (notebook 01_train)",
    "evaluate": "`adkit evaluate --run-dir {run}` (notebook 01_train)",
    "attention": "`adkit attention --run-dir {run}` (notebook 02_extract_attention)",
    "study": "`adkit study --run-dir {run}` (notebooks 04_compressors, 05_retrain_eval)",
}


class MissingStage(FileNotFoundError):
    """An upstream file is missing; the message gives its absolute path and the command or notebook that makes it."""


def require(path: str | os.PathLike, made_by: str) -> Path:
    """``path`` if it exists, else :class:`MissingStage` naming its absolute path and ``made_by``."""
    path = Path(path)
    if not path.exists():
        raise MissingStage(f"{path.resolve()} does not exist yet; it is made by {made_by}")
    return path


def task_split(cfg: Config) -> tuple[list, list]:
    """(train tasks, held-out tasks) of ``cfg.env``: the published split, each cut to its first
    ``env.train_tasks`` / ``env.test_tasks`` tasks when those are set."""
    e = cfg.env
    train, test = envs.task_split(e.name, e.split_seed, e.train_ratio)
    return train[:e.train_tasks or None], test[:e.test_tasks or None]


def histories_path(cfg: Config, root: Path | None = None) -> Path:
    """Where the histories ``cfg`` asks for live: ``data/{env}-{source}-{id}.h5`` under ``root`` (default
    the project home), ``id`` a hash of the env and collect config (:func:`adkit.config.dataset_id`),
    so profiles that collect the same data share one file and other data never overwrites it."""
    name = f"{envs.spec(cfg.env.name).name}-{cfg.collect.source}-{dataset_id(cfg)}.h5"
    return (root or home()) / "data" / name


@dataclass(frozen=True)
class Run:
    """One run directory: its config and the path of every artefact in it (see the module doc)."""

    dir: Path  # absolute
    cfg: Config
    home: Path = field(default_factory=home)  # the project the run's shared files (histories) live in

    @classmethod
    def create(cls, cfg: Config, run_dir: str | os.PathLike | None = None) -> Run:
        """A run for ``cfg`` at ``run_dir`` (default ``runs/{profile}``); nothing is written yet."""
        return cls(resolve(run_dir or Path("runs") / cfg.profile), cfg)

    @classmethod
    def open(cls, run_dir: str | os.PathLike, overrides: dict | None = None) -> Run:
        """The run trained into ``run_dir``, with the config saved there (and nested ``overrides`` on it)."""
        d = resolve(run_dir)
        config = require(d / "config.yaml", MAKERS["train"].format(profile="PROFILE", run=run_dir))
        return cls(d, load_config(config, overrides))

    def with_config(self, cfg: Config) -> Run:
        """The same run directory read with another config (e.g. the saved one with overrides)."""
        return replace(self, cfg=cfg)

    def made_by(self, stage: str) -> str:
        return MAKERS[stage].format(profile=self.cfg.profile, run=self.dir)

    def require(self, path: Path, stage: str) -> Path:
        """``path`` (one of this run's files) if it exists, else :class:`MissingStage` naming ``stage``'s command."""
        return require(path, self.made_by(stage))

    # ---- task split and data ------------------------------------------------------------------------
    @cached_property
    def split(self) -> tuple[list, list]:
        """(train tasks, held-out tasks) of the run's task family, the published split."""
        return task_split(self.cfg)

    @property
    def train_tasks(self) -> list:
        return self.split[0]

    @property
    def test_tasks(self) -> list:
        return self.split[1]

    @property
    def histories(self) -> Path:
        return histories_path(self.cfg, self.home)

    def seed_run(self, seed: int) -> Run:
        """The run of another training seed of the same recipe (``seeds/seed{S}``)."""
        cfg = replace(self.cfg, train=replace(self.cfg.train, seed=seed, extra_seeds=[]))
        return replace(self, dir=self.dir / "seeds" / f"seed{seed}", cfg=cfg)

    def cell(self, name: str, budget: int, seed: int, kv: str = "reencode") -> Path:
        """The run directory of one retrained cell of the study (``-evict``: trained for an evicting cache;
        ``-ft``: fine-tuned from this run's model, ``study.init: run``)."""
        suffix = ("-evict" if kv == "evict" else "") + ("-ft" if self.cfg.study.init == "run" else "")
        return self.study / "retrained" / f"{name}-b{budget}-s{seed}{suffix}"


FILES = {  # Run attribute -> its path inside the run directory (the layout in the module doc)
    "config_file": "config.yaml", "weights": "model.safetensors", "model_json": "model.json",
    "train_state": "train_state.safetensors", "train_state_json": "train_state.json", "train_log": "train_log.csv",
    "tensorboard": "tensorboard", "returns": "eval/returns.csv", "returns_figure": "eval/returns.png",
    "eval_summary": "eval/summary.json",
    "seeds_table": "eval/seeds.csv", "seeds_figure": "eval/returns_seeds.png", "attention": "attention/attention.h5",
    "insights": "attention/insights.json", "figs": "figs", "study": "study", "notebooks": "notebooks",
}
for _name, _rel in FILES.items():
    setattr(Run, _name, property(lambda self, rel=_rel: self.dir / rel, doc=f"``RUN/{_rel}``"))
