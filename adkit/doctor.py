"""``adkit doctor``: is everything in place, and what should run next?"""

from __future__ import annotations

import importlib

from adkit.config import load_config
from adkit.run import Run

PACKAGES = ("torch", "numpy", "gymnasium", "h5py", "safetensors", "einops", "matplotlib", "seaborn", "pandas",
            "tqdm", "yaml")
NOTEBOOK_PACKAGES = ("papermill", "ipywidgets", "ipykernel", "nbval")


def _check(ok: bool, what: str, fix: str = "") -> bool:
    print(f"  {'OK ' if ok else 'MISSING'}  {what}" + ("" if ok or not fix else f"\n           -> {fix}"))
    return ok


def doctor(config: str = "quick", run_dir: str | None = None, overrides: dict | None = None) -> int:
    """Print a checklist; return 0 if the pipeline is complete for ``config``, 1 otherwise."""
    print("packages")
    ok = True
    for name in PACKAGES + NOTEBOOK_PACKAGES:
        try:
            mod = importlib.import_module(name)
            _check(True, f"{name} {getattr(mod, '__version__', '')}")
        except ImportError:
            extra = "notebooks,test" if name in NOTEBOOK_PACKAGES else ""
            ok &= _check(False, name, f"pip install -e '.[{extra}]'" if extra else "pip install -e .")
    cfg = load_config(config, overrides)
    run = Run.create(cfg, run_dir)
    print(f"profile {cfg.profile}: {cfg.env.name}, source {cfg.collect.source}")
    steps = [
        (run.histories.exists(), f"histories {run.histories}", f"adkit collect -c {config}"),
        (run.weights.exists(), f"checkpoint {run.weights}", f"adkit train -c {config} --run-dir {run.dir}"),
        (run.returns.exists(), f"in-context evaluation {run.returns}", f"adkit evaluate --run-dir {run.dir}"),
    ]
    later = [
        (run.attention.exists(), f"attention file {run.attention}",
         f"adkit attention --run-dir {run.dir}  (notebooks 02, 03)"),
        ((run.study / "results.csv").exists(), f"compression study {run.study / 'results.csv'}",
         f"adkit study --run-dir {run.dir}  (notebooks 04, 05)"),
    ]
    print("pipeline")
    next_cmd = None
    for present, what, cmd in steps:
        ok &= _check(present, what, cmd)
        if not present and next_cmd is None:
            next_cmd = cmd
    print("analysis (optional)")
    for present, what, cmd in later:
        print(f"  {'OK ' if present else '-- '}  {what}" + ("" if present else f"\n           -> {cmd}"))
        if not present and next_cmd is None:
            next_cmd = cmd
    print(f"next: {next_cmd}" if next_cmd else "everything is in place; open the notebooks or figs/REPORT.md")
    return 0 if ok else 1
