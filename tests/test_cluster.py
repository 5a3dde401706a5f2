"""Study cells on Ray: the same resumable table, retries, and failures reported, never lost."""

import sys
from pathlib import Path

import pandas as pd
import pytest

from adkit.config import load_config
from adkit.data.histories import save as save_histories
from adkit.model.train import train
from adkit.run import Run
from adkit.study import retrained
from adkit.study.cells import CellsFailed, run_cells

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not import the tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def flaky(name: str, marker: str) -> dict:
    """Cell ``bad``'s code fails (every attempt is counted in ``marker``.bad); ``once`` meets a file
    system error the first time only (a marker file remembers)."""
    if name == "bad":
        with open(f"{marker}.bad", "a") as f:
            f.write("x")
        raise ValueError("this cell always fails")
    if name == "once" and not Path(marker).exists():
        Path(marker).touch()
        raise OSError("first attempt fails")
    return {"name": name, "value": len(name)}


@pytest.mark.slow
def test_transient_failures_are_retried_code_failures_reported_at_once_finished_cells_kept(local_ray, tmp_path):
    path = tmp_path / "table.csv"
    cells = [("good", str(tmp_path / "m")), ("once", str(tmp_path / "m")), ("bad", str(tmp_path / "m"))]
    with pytest.raises(CellsFailed, match=r"(?s)1 cell\(s\) failed .OSError and lost workers after 2 retries.*"
                                          r"'bad'.*ValueError: this cell always fails"):
        run_cells(path, ["name", "value"], cells, lambda r: (r["name"], str(tmp_path / "m")), flaky,
                  desc="cells", progress=False, executor="ray")
    table = pd.read_csv(path)
    assert sorted(table["name"]) == ["good", "once"]  # "once" succeeded on its retry
    assert (tmp_path / "m.bad").read_text() == "x"  # a failure of the cell's own code is not retried


@pytest.mark.slow
def test_a_tiny_retrained_study_on_local_ray(local_ray, tmp_path, tiny_hist):
    cfg = load_config("tiny", {"train": {"steps": 4}, "eval": {"seeds": 1},
                               "study": {"retrain_compressors": ["recency"], "retrain_budgets": [0.25], "steps": 2,
                                         "episodes": 2, "seeds": 1, "executor": "ray"}})
    run = Run(tmp_path / "runs" / "tiny", cfg, tmp_path)
    save_histories(tiny_hist, run.histories)
    train(run, tiny_hist, progress=False)
    table = retrained.retrained_study(run, progress=False)
    assert set(zip(table["compressor"], table["budget"])) == {("none", 20), ("recency", 5)}
    assert not table.isna().any().any() and (run.study / retrained.TABLE).exists()
    assert (run.cell("recency", 5, 0) / "model.safetensors").exists()  # trained by a Ray worker, same layout
