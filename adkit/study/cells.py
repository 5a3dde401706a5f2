"""What both study modes share: the resumable cell loop, table I/O, budgets, and calibrations.

A study is a table with one row per *cell* (compressor x budget x seed). The table
is rewritten atomically after every finished cell, so an interrupted study loses no
finished cell, and a rerun computes only the missing ones (:func:`run_cells`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from adkit import compress
from adkit.analysis.metrics import head_profile
from adkit.data.tokens import Tokens
from adkit.io import atomic_path


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


def run_cells(path: Path, columns: Sequence[str], cells: Sequence[tuple], key: Callable[[dict], tuple],
              compute: Callable[..., dict], *, desc: str, workers: int = 1, progress: bool = True,
              finish: Callable[[list[dict]], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Compute every cell of ``cells`` whose ``key`` has no row in the table at ``path`` yet.

    ``compute(*cell)`` returns the cell's row; ``key(row)`` gives the cell tuple of a finished
    row. After each cell the table (``finish(rows)``, default the rows as they are) is rewritten
    atomically. ``workers > 1`` computes cells in that many spawned processes (``compute`` must
    then be picklable); a failed cell raises after the finished ones are written.
    """
    rows = read_table(path, columns).to_dict("records")
    done = {key(r) for r in rows}
    todo = [cell for cell in cells if tuple(cell) not in done]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=desc, disable=not progress)

    def add(row: dict) -> None:
        rows.append(row)
        write_table(finish(rows) if finish else pd.DataFrame(rows, columns=list(columns)), path, columns)
        bar.update()

    try:
        if workers <= 1:
            for cell in todo:
                bar.set_postfix_str(" ".join(map(str, cell)))
                add(compute(*cell))
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for future in as_completed([pool.submit(compute, *cell) for cell in todo]):
                    add(future.result())
    finally:
        bar.close()
    return read_table(path, columns)


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

