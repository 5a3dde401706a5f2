"""What both study modes share: the resumable cell loop, table I/O, budgets, and calibrations.

A study is a table with one row per *cell* (compressor x budget x seed). The table
is rewritten atomically after every finished cell, so an interrupted study loses no
finished cell, and a rerun computes only the missing ones (:func:`run_cells`).
"""

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adkit import compress
from adkit.analysis.metrics import head_profile
from adkit.data.tokens import Tokens
from adkit.io import atomic_path
from adkit.progress import bar


def read_table(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """The study table at ``path`` (empty, with ``columns``, when there is none yet)."""
    path = Path(path)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(columns))


def write_table(df: pd.DataFrame, path: str | Path, columns: Sequence[str]) -> Path:
    """Write ``columns`` of the table atomically (a crash leaves the previous file whole)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df[list(columns)].to_csv(tmp, index=False)
    return path


EXECUTORS = ("local", "ray")
TRANSIENT = (OSError,)  # errors of the machine, not of the cell's code: worth retrying on Ray


class CellsFailed(RuntimeError):
    """Some cells failed (after their retries); every finished cell is in the table."""


def run_cells(path: Path, columns: Sequence[str], cells: Sequence[tuple], key: Callable[[dict], tuple],
              compute: Callable[..., dict], *, desc: str, workers: int = 1, progress: bool = True,
              finish: Callable[[list[dict]], pd.DataFrame] | None = None, executor: str = "local",
              address: str = "", retries: int = 2) -> pd.DataFrame:
    """Compute every cell of ``cells`` whose ``key`` has no row in the table at ``path`` yet.

    ``compute(*cell)`` returns the cell's row; ``key(row)`` gives the cell tuple of a finished
    row. After each cell the table (``finish(rows)``, default the rows as they are) is rewritten
    atomically. ``executor="local"``: in this process (a failure stops the loop), or with
    ``workers > 1`` in that many spawned processes (failures are reported in :class:`CellsFailed`
    once every other cell has finished and been written).
    ``executor="ray"``: each cell is a Ray task (one CPU) on the cluster at ``address`` (a local
    Ray instance when empty); a task whose worker was lost or that raised an error of the machine
    (``OSError``: a file system or network hiccup) is retried up to ``retries`` times, one whose
    own code failed (any other error, which would only fail again) is not; failures are reported
    in :class:`CellsFailed` once every other cell has finished. ``compute`` must pickle for both
    process-based ways.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    rows = read_table(path, columns).to_dict("records")
    done = {key(r) for r in rows}
    todo = [cell for cell in cells if tuple(cell) not in done]
    progress_bar = bar(total=len(cells), initial=len(cells) - len(todo), desc=desc, disable=not progress)

    def add(row: dict) -> None:
        rows.append(row)
        write_table(finish(rows) if finish else pd.DataFrame(rows, columns=list(columns)), path, columns)
        progress_bar.update()

    try:
        if executor == "ray":
            _run_on_ray(todo, compute, add, address, retries)
        elif workers <= 1:
            for cell in todo:
                progress_bar.set_postfix_str(" ".join(map(str, cell)))
                add(compute(*cell))
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(compute, *cell): cell for cell in todo}
                failed = []
                for future in as_completed(futures):
                    try:
                        add(future.result())
                    except Exception as e:  # noqa: BLE001 (reported with the others below)
                        failed.append(f"{futures[future]}: {type(e).__name__}: {e}")
            if failed:
                raise CellsFailed(f"{len(failed)} cell(s) failed (finished cells are kept; run the study again to "
                                  "retry them):\n" + "\n".join(failed))
    finally:
        progress_bar.close()
    return read_table(path, columns)


def _call(compute: Callable[..., dict], *cell) -> dict:
    """One cell in a Ray worker (Ray runs functions, not partials)."""
    return compute(*cell)


def _run_on_ray(todo: Sequence[tuple], compute: Callable[..., dict], add: Callable[[dict], None], address: str,
                retries: int) -> None:
    """Every cell as a Ray task; rows are added as tasks finish; failures are raised together at the end."""
    try:
        ray = importlib.import_module("ray")
    except ImportError:
        raise ValueError("study.executor 'ray' needs Ray: pip install 'adkit[cluster]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=list(TRANSIENT))(_call)
        shared = ray.put(compute)
        pending = {task.remote(shared, *cell): cell for cell in todo}
        failed = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                add(ray.get(done[0]))
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None) or e  # a task's own exception, else Ray's (a lost worker)
                failed.append(f"{cell}: {type(cause).__name__}: {cause}")
        if failed:
            raise CellsFailed(f"{len(failed)} cell(s) failed ({', '.join(e.__name__ for e in TRANSIENT)} and lost "
                              f"workers after {retries} retries; finished cells are kept; run the study again to "
                              "retry them):\n" + "\n".join(failed))
    finally:
        if started:
            ray.shutdown()


def check_budgets(budgets: Sequence[int], n_transit: int) -> list[int]:
    """Budgets as transitions kept, each in ``1 .. n_transit - 1``; else ValueError."""
    bad = [b for b in budgets if not (isinstance(b, (int, np.integer)) and 1 <= b < n_transit)]
    if bad or not budgets:
        raise ValueError(f"budgets must be transitions kept in 1..{n_transit - 1} (n_transit {n_transit}), "
                         f"got {list(budgets)}")
    return [int(b) for b in budgets]


def check_names(names: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Registry names, in order and once each; unknown or excluded ones raise ValueError."""
    names = list(dict.fromkeys(names))
    bad = [c for c in names if c not in compress.COMPRESSORS or c in exclude]
    if bad:
        known = [c for c in compress.COMPRESSORS if c not in exclude]
        raise ValueError(f"cannot use compressors {bad} here; strategies: {', '.join(known)}")
    return names


def profile_kwargs(model, contexts: Tokens) -> dict:
    """``rule`` and ``size`` of :class:`~adkit.compress.ProfileCompressor`, profiled (FastGen-style,
    :func:`adkit.analysis.metrics.head_profile`) on every layer and head of ``model`` over ``contexts``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(**contexts, names="hook_pattern")
    rewards = contexts["rewards"][:, :-1].numpy()  # (B, L - 1) of the context transitions
    records = [p for layer in cache.stack("pattern").numpy() for p in head_profile(layer, rewards)]
    chosen = compress.ProfileCompressor.from_profile(records, 1)
    return {"rule": chosen.rule, "size": chosen.size}


def share(df: pd.DataFrame) -> pd.Series:
    """Each row's return as a share of its full-context return (NaN where that is not positive)."""
    return df["return"] / df["full_return"].where(df["full_return"] > 0)

