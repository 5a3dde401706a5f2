import shutil

import pytest
import torch

from adkit.config import load_config
from adkit.data.collect import collect
from adkit.data.histories import save
from adkit.model.checkpoint import load
from adkit.model.evaluate import evaluate_run
from adkit.model.train import train
from adkit.run import Run

torch.set_num_threads(1)  # tests run beside each other on small machines; avoid thread oversubscription


@pytest.fixture(autouse=True)
def project_home(tmp_path, monkeypatch):
    """Every test's relative paths (runs/, data/, figs/) resolve in its own temporary project."""
    monkeypatch.setenv("ADKIT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_hist(tiny_cfg):
    return collect(tiny_cfg, progress=False)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, tiny_cfg, tiny_hist) -> Run:
    """One tiny run, trained and evaluated once per session: its histories file, checkpoint and
    evaluation. Tests that write into a run take :func:`tiny_run`, a fresh copy."""
    root = tmp_path_factory.mktemp("tiny-home")
    run = Run(root / "runs" / "tiny", tiny_cfg, root)
    save(tiny_hist, run.histories)
    train(run, tiny_hist, progress=False)
    evaluate_run(run, load(run.weights), progress=False)
    return run


@pytest.fixture
def tiny_run(trained_tiny, project_home) -> Run:
    """A copy of the session's tiny run (and its histories) in this test's project."""
    run = Run(project_home / "runs" / "tiny", trained_tiny.cfg, project_home)
    shutil.copytree(trained_tiny.dir, run.dir)
    run.histories.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained_tiny.histories, run.histories)
    return run
