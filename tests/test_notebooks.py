"""Notebooks: jupytext pairs in sync, committed clean, and headless runs on the tiny profile from `notebooks/`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pandas as pd
import papermill as pm
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
NAMES = ["01_train", "02_extract_attention", "03_metrics", "04_compressors", "05_retrain_eval"]


def cells(nb) -> list[tuple[str, str, list]]:
    return [(c["cell_type"], "".join(c["source"]).strip(), sorted(c.get("metadata", {}).get("tags", [])))
            for c in nb["cells"]]


@pytest.mark.parametrize("name", NAMES)
def test_the_py_source_and_the_notebook_are_in_sync(name):
    """Contributors edit ``notebooks/NAME.py`` (jupytext percent format) and run
    ``jupytext --sync notebooks/*.py``; the pair must hold the same cells."""
    source = jupytext.read(NB_DIR / f"{name}.py")
    notebook = jupytext.read(NB_DIR / f"{name}.ipynb")
    assert cells(source) == cells(notebook), f"{name}.py and {name}.ipynb differ: run jupytext --sync"


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs_with_one_parameters_cell(name):
    nb = json.loads((NB_DIR / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{name} has outputs: strip them (jupytext --sync from the .py source)"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    params = "".join(tagged[0]["source"])
    assert "profile" in params and "overrides" in params and "interactive = True" in params
    assert "tiny" not in "".join("".join(c["source"]) for c in code if c is not tagged[0]), \
        "notebooks are sized by profiles, never by branches on a profile's name"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run the notebooks in order, headless, on the tiny profile, with the kernel in ``notebooks/`` (as
    JupyterLab starts it) and relative paths resolving in a temporary project (``ADKIT_HOME``)."""
    home = tmp_path_factory.mktemp("project")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADKIT_HOME", str(home))
        for name in NAMES:
            params = {"profile": "tiny", "run_dir": "runs/tiny", "interactive": False,
                      "overrides": ["train.extra_seeds=[1]"] if name == "01_train" else []}
            out[name] = pm.execute_notebook(str(NB_DIR / f"{name}.ipynb"), str(home / f"{name}.ipynb"),
                                            parameters=params, cwd=str(NB_DIR), kernel_name="python3",
                                            execution_timeout=600, progress_bar=False)
    return home, out


def text(nb) -> str:
    return "".join(o.get("text", "") for c in nb["cells"] for o in c.get("outputs", []))


def figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.slow
def test_notebooks_run_from_the_notebooks_folder_and_write_into_the_project(executed):
    home, out = executed
    run = home / "runs" / "tiny"
    assert (run / "model.safetensors").exists() and len(list((home / "data").glob("darkroom-psrl-*.h5"))) == 1
    assert not (NB_DIR / "runs").exists() and not (NB_DIR / "data").exists()
    assert "of optimal" in text(out["01_train"])
    assert figures(out["01_train"]) >= 5  # source, loss, in-context curve, over training seeds, per task
    seeds = pd.read_csv(run / "eval" / "seeds.csv", index_col=0)
    assert list(seeds.index) == ["0", "1", "mean", "std"]
    assert seeds.loc["mean", "last_share"] == pytest.approx(seeds.loc[["0", "1"], "last_share"].mean())
    assert seeds.loc["std", "last_share"] == pytest.approx(seeds.loc[["0", "1"], "last_share"].std(ddof=1))


@pytest.mark.slow
def test_each_notebook_leaves_its_numbers(executed):
    home, out = executed
    run = home / "runs" / "tiny"
    assert "256 windows of 20 tokens -> patterns (2, 256, 2, 20, 20)" in text(out["02_extract_attention"])
    assert figures(out["02_extract_attention"]) >= 3  # windows panel, trajectory, rollout panel
    insights = json.loads((run / "attention" / "insights.json").read_text())
    assert [layer["layer"] for layer in insights["layers"]] == [0, 1] and insights["ablation"]["verdict"]
    tf = pd.read_csv(run / "study" / "training_free.csv")
    assert set(tf["compressor"]) == {"none", "full", "recency", "h2o", "random", "oracle", "attention"}  # 04, then 05
    assert set(tf.loc[~tf["compressor"].isin(["none", "full"]), "budget"]) == {5}
    both = pd.read_csv(run / "study" / "results.csv")
    assert set(both["mode"]) == {"retrained", "training-free"}
    assert set(both["compressor"]) == {"none", "recency", "attention", "random"}
    assert "rows in" in text(out["05_retrain_eval"]) and figures(out["05_retrain_eval"]) >= 3


@pytest.mark.slow
def test_nbval_rerun_of_the_extraction_notebook_prints_the_same(executed):
    """nbval re-executes the executed extraction notebook (tiny parameters injected) and compares every
    output that does not hold a figure, a widget or a path (``tests/nbval_sanitize.cfg``)."""
    home, _ = executed
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
           "--nbval-sanitize-with", str(SANITIZE), "--nbval-cell-timeout", "600",
           str(home / "02_extract_attention.ipynb")]
    env = {**os.environ, "ADKIT_HOME": str(home)}
    run = subprocess.run(cmd, cwd=NB_DIR, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.slow
def test_report_is_one_page_linking_existing_figures(executed, tmp_path):
    import re

    from adkit.demo import NOTEBOOKS
    from adkit.run import Run
    from adkit.study.report import report

    home, _ = executed
    path = report(Run.open(home / "runs" / "tiny"), tmp_path / "figs", {name: 1.0 for name in NOTEBOOKS})
    text_ = path.read_text()
    for heading in ("## In-context learning on held-out tasks", "## What the model attends to",
                    "## Compression: retrained against training-free", "## Notebooks"):
        assert heading in text_
    assert "- in context on held-out tasks: first episode" in text_ and "best retrained" in text_
    links = re.findall(r"\]\(([^)]+)\)", text_)
    assert "- over 2 training seeds: first episode" in text_
    assert {"incontext_returns.png", "incontext_seeds.png", "pareto.png", "attention_compressed.png",
            "results.md"} <= set(links)
    assert all((path.parent / link).exists() for link in links)
