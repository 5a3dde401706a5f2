"""Notebooks: committed clean, one parameters cell, and headless runs on the tiny profile."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
NAMES = ["01_train", "02_extract_attention", "03_metrics", "04_compressors", "05_retrain_eval"]
PARAMS = {"01_train": {"more_seeds": [1]}}  # beyond profile and run directory


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs_with_one_parameters_cell(name):
    nb = json.loads((NB_DIR / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{name} has outputs: strip them (nbstripout notebooks/*.ipynb)"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert "profile" in "".join(tagged[0]["source"])


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run the notebooks in order, headless, on the tiny profile (papermill)."""
    work = tmp_path_factory.mktemp("nb")
    out = {}
    for name in NAMES:
        out[name] = pm.execute_notebook(str(NB_DIR / f"{name}.ipynb"), str(work / f"{name}.ipynb"),
                                        parameters={"profile": "tiny", "run_dir": str(work / "run"),
                                                    **PARAMS.get(name, {})},
                                        cwd=str(work), kernel_name="python3", execution_timeout=600,
                                        progress_bar=False)
    return work, out


@pytest.mark.slow
def test_notebooks_run_headless_on_tiny(executed):
    work, out = executed
    assert (work / "run" / "model.safetensors").exists()
    assert (work / "run" / "eval" / "returns.csv").exists()
    text = "".join(o.get("text", "") for c in out["01_train"]["cells"] for o in c.get("outputs", []))
    assert "of optimal" in text
    figures = [o for c in out["01_train"]["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) >= 4  # source curves, loss curves, in-context curve, the same over training seeds
    seeds = pd.read_csv(work / "run" / "eval" / "seeds.csv", index_col=0)
    assert list(seeds.index) == ["0", "1", "mean", "std"]
    assert seeds.loc["mean", "last_share"] == pytest.approx(seeds.loc[["0", "1"], "last_share"].mean())


@pytest.mark.slow
def test_nbval_rerun_prints_the_same_checked_summaries(executed):
    """nbval re-executes the executed copies (tiny parameters injected) and compares the
    cells marked ``# NBVAL_CHECK_OUTPUT`` with the first run's output, floats sanitized."""
    work, out = executed
    checked = [c for nb in out.values() for c in nb["cells"] if "# NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert len(checked) >= len(NAMES)  # at least one checked summary per notebook
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
           "--nbval-sanitize-with", str(SANITIZE), "--nbval-cell-timeout", "600",
           *(str(work / f"{name}.ipynb") for name in NAMES)]
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@pytest.mark.slow
def test_report_is_one_page_linking_existing_figures(executed, tmp_path):
    import re

    from adkit.demo import NOTEBOOKS, report

    work, _ = executed
    path = report(work / "run", tmp_path / "figs", {name: 1.0 for name in NOTEBOOKS})
    text = path.read_text()
    for heading in ("## In-context learning on held-out tasks", "## What the model attends to",
                    "## Compression: retrained against training-free", "## Notebooks"):
        assert heading in text
    assert "- in context on held-out tasks: first episode" in text and "best retrained" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "- over 2 training seeds: first episode" in text
    assert {"incontext_returns.png", "incontext_seeds.png", "pareto.png", "attention_compressed.png",
            "results.md"} <= set(links)
    assert all((path.parent / link).exists() for link in links)
