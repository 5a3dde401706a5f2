"""``adkit demo`` / ``make demo``: the five notebooks headless on one profile, then a one-page report.

Every stage is sized by the profile (the ``demo`` profile is ``quick`` with a compression
sweep that fits in minutes); the notebooks get only the profile, the run directory and
``interactive=False``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import papermill as pm

from adkit.config import load_config, parse_overrides
from adkit.paths import home
from adkit.run import Run
from adkit.study.report import report

NOTEBOOKS = ("01_train", "02_extract_attention", "03_metrics", "04_compressors", "05_retrain_eval")
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, run: Run, params: dict, timeout: int = 1800, progress: bool = True) -> Path:
    """Run one notebook through papermill in ``notebooks/`` (as JupyterLab would); the executed copy
    goes to ``run.notebooks``. With ``progress``, a bar over its cells and what its cells print
    (their own progress bars as text lines, :mod:`adkit.progress`) reach this terminal."""
    out = run.notebooks / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    os.environ["ADKIT_PROGRESS"] = "text"  # the kernel inherits it
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out), parameters=params, cwd=str(NOTEBOOK_DIR),
                        kernel_name="python3", execution_timeout=timeout, progress_bar=progress,
                        stdout_file=sys.stdout if progress else None)
    return out


def run_demo(profile: str = "demo", run_dir: str | None = None, overrides: list[str] | None = None) -> int:
    run = Run.create(load_config(profile, parse_overrides(overrides)), run_dir)
    timings = {}
    for name in NOTEBOOKS:
        t0 = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        execute(name, run, {"profile": profile, "run_dir": str(run.dir), "overrides": list(overrides or []),
                            "interactive": False})
        timings[name] = time.perf_counter() - t0
        print(f"[demo] {name} done in {timings[name]:.0f} s", flush=True)
    path = report(run, home() / "figs", timings)
    print(f"[demo] report: {path}")
    return 0
