"""The few lines every notebook starts with: its config, its run, and a one-line summary.

>>> run = setup(profile, run_dir, overrides)            # 02-05: the run 01 trained
>>> run = setup(profile, run_dir, overrides, new=True)  # 01: the run it is about to train
"""

from __future__ import annotations

from IPython import get_ipython

from adkit import threads
from adkit.config import load_config, parse_overrides
from adkit.run import Run


def setup(profile: str, run_dir: str | None = None, overrides: list[str] | None = None, new: bool = False) -> Run:
    """The notebook's run. ``new``: built from ``profile`` with ``overrides`` (``SECTION.FIELD=VALUE``
    strings, as ``--set`` takes them); otherwise the run already trained in ``run_dir`` (default
    ``runs/<profile>``), its saved config with ``overrides`` applied. Paths resolve against the
    project, so the kernel's working directory does not matter; torch threads follow
    :mod:`adkit.threads`. In a kernel, figures show inline
    (also those the slider panels draw before any pyplot call)."""
    threads.configure()
    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    run = Run.create(load_config(profile, parse_overrides(overrides)), run_dir)
    if not new:
        run = Run.open(run.dir, parse_overrides(overrides))
    m = run.cfg.model
    print(f"profile {run.cfg.profile}: {run.cfg.env.name}, {len(run.train_tasks)} train / {len(run.test_tasks)} "
          f"held-out tasks; n_transit {m.n_transit}, {m.tf_n_layer} layers x {m.tf_n_head} heads; run {run.dir}")
    return run
