"""``adkit collect``: run a source algorithm on every task and write its learning histories."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from adkit import envs, threads
from adkit.config import Config, dump_config, flatten, provenance
from adkit.data.histories import Histories, HistoriesError, load, save
from adkit.data.loop import record
from adkit.data.sources import make_learner
from adkit.run import histories_path, task_split


def collect(cfg: Config, progress: bool = True) -> Histories:
    """Histories of ``cfg.collect.source`` on all tasks of ``cfg.env`` (train and test).

    Test tasks are collected too: their source curves are the baseline that the
    in-context evaluation is compared with. The split's tasks (all of the family's
    unless ``env.train_tasks`` / ``env.test_tasks`` cut it), in the family's order,
    x streams run in one batched vector env; with ``collect.workers`` > 1, in that
    many processes at once, each on a slice of the tasks with one torch thread (the
    slice ``i`` learner is seeded ``seed + 10,000 i``).
    """
    c = cfg.collect
    wanted = {tuple(t) for part in task_split(cfg) for t in part}
    tasks = np.array([t for t in envs.task_list(cfg.env.name) if t in wanted], dtype=np.int64)  # (n_tasks, task_dim)
    shape = (len(tasks), c.streams)
    arrays = {k: v.reshape(shape + v.shape[1:])  # (n_tasks * n_streams, steps, ...) -> (n_tasks, n_streams, ...)
              for k, v in record_all(cfg, tasks, progress).items()}
    return Histories(env=envs.spec(cfg.env.name).name, source=c.source, tasks=tasks, seed=c.seed,
                     config=dump_config(cfg), **arrays)


def record_all(cfg: Config, tasks: np.ndarray, progress: bool = True) -> dict[str, np.ndarray]:
    """:func:`record` of the source on ``tasks`` x streams (task-major rows), in ``collect.workers``
    processes at once when it is above 1, each on a slice of the tasks with one torch thread."""
    slices = np.array_split(tasks, min(cfg.collect.workers, len(tasks)))
    if len(slices) == 1:
        return record_tasks(cfg, tasks, 0, progress)
    with ProcessPoolExecutor(len(slices), mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(record_in_worker, [cfg] * len(slices), slices, range(len(slices)),
                              [progress] + [False] * (len(slices) - 1)))  # one progress bar: the first slice's
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def record_tasks(cfg: Config, tasks: np.ndarray, part: int, progress: bool) -> dict[str, np.ndarray]:
    """:func:`record` of the source on ``tasks`` x streams (slice ``part`` of the split's tasks)."""
    c = cfg.collect
    env = envs.make(cfg.env.name, tasks, streams=c.streams)
    learner = make_learner(env, dataclasses.replace(c, seed=c.seed + 10_000 * part))
    desc = f"collect {c.source}" + (f" ({c.workers} processes)" if c.workers > 1 else "")
    return record(env, learner, c.steps, seed=c.seed + part, progress=progress, desc=desc)


def record_in_worker(*args) -> dict[str, np.ndarray]:
    """:func:`record_tasks` in a worker process, at one torch thread."""
    threads.configure(1)
    return record_tasks(*args)


def collect_to_file(cfg: Config, path: str | Path | None = None, progress: bool = True) -> tuple[Path, float]:
    """Collect and save atomically; returns the path and the seconds spent collecting."""
    path = Path(path) if path else histories_path(cfg)
    t0 = time.perf_counter()
    h = collect(cfg, progress=progress)
    seconds = time.perf_counter() - t0
    save(h, path)
    return path, seconds


def check_provenance(h: Histories, cfg: Config, path: str | Path) -> None:
    """Refuse histories collected with another env or collect config than ``cfg`` asks for,
    naming every field that differs."""
    stored = yaml.safe_load(h.config) if h.config else {}
    have, want = (flatten(provenance(d)) for d in (stored or {}, cfg))
    diff = [f"{k}: {have.get(k)!r} in the file, {want.get(k)!r} asked" for k in sorted(have.keys() | want.keys())
            if have.get(k) != want.get(k)]
    if diff:
        raise HistoriesError(f"{path} holds other histories than this config asks for ({'; '.join(diff)}); "
                             f"collect them with `adkit collect -c {cfg.profile}` or pass the matching file")


def load_for(cfg: Config, path: str | Path | None = None) -> Histories:
    """The histories ``cfg`` asks for (at ``path``, default its own file), checked by :func:`check_provenance`."""
    path = Path(path) if path else histories_path(cfg)
    h = load(path)
    check_provenance(h, cfg, path)
    return h


def ensure_histories(cfg: Config, path: str | Path | None = None, progress: bool = True) -> tuple[Histories, Path]:
    """The histories ``cfg`` asks for (or ``path``), collected first if the file does not exist."""
    path = Path(path) if path else histories_path(cfg)
    if not path.exists():
        collect_to_file(cfg, path, progress=progress)
    return load_for(cfg, path), path

