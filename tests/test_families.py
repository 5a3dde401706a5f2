"""The Key-to-Door, Darkroom-Permuted and Darkroom-Hard profiles: they load with contexts that span the
source's memory, and tiny variants run end to end through the CLI and a notebook."""

from pathlib import Path

import papermill as pm
import pytest

from adkit import envs
from adkit.cli import main
from adkit.config import load_config

PROFILES = ("key-to-door", "darkroom-permuted", "darkroom-hard")
NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def tiny(profile: str) -> list[str]:
    """Overrides that shrink a family profile to seconds: a few tasks, two remembered episodes."""
    horizon = envs.spec(load_config(profile).env.name).horizon
    return ["env.train_tasks=6", "env.test_tasks=2", "collect.streams=2", f"collect.steps={horizon * 6}",
            "collect.psrl.memory=2", f"model.n_transit={2 * horizon}", "model.tf_n_embd=16", "model.tf_n_layer=2",
            "model.tf_n_head=2", "model.tf_n_inner=32", f"train.seq_len={3 * horizon}", "train.steps=4",
            "train.batch_size=4", "train.val_every=2", "train.val_batches=1", "train.warmup_steps=1",
            "eval.episodes=3", "eval.seeds=1", "attention.windows=8", "attention.loo_samples=2",
            "attention.drop_counts=[1,2]"]


@pytest.mark.parametrize("profile", [*PROFILES, "key-to-door-long"])
def test_profiles_span_the_sources_memory(profile):
    cfg = load_config(profile)
    horizon = envs.spec(cfg.env.name).horizon
    assert cfg.collect.source == "psrl" and cfg.model.n_transit >= cfg.collect.psrl.memory * horizon
    assert cfg.model.n_transit >= 200 and cfg.eval.episodes >= 50
    assert cfg.train.seq_len >= cfg.model.n_transit  # training windows longer than a decision's window


def test_the_long_profile_has_a_context_of_at_least_400():
    cfg = load_config("key-to-door-long")
    assert cfg.model.n_transit >= 400 and cfg.env.name == "key-to-door"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADKIT_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_tiny_variant_runs_end_to_end(profile, in_tmp, capsys):
    s = ["--set", *tiny(profile)]
    assert main(["collect", "-c", profile, *s]) == 0
    assert main(["train", "-c", profile, "--run-dir", "runs/r", *s]) == 0
    assert main(["evaluate", "--run-dir", "runs/r"]) == 0
    assert "last 10 episodes" in capsys.readouterr().out
    assert main(["attention", "--run-dir", "runs/r"]) == 0
    insights = (in_tmp / "runs/r/attention/insights.md").read_text()
    assert "Attention on the task's information" in insights
    assert ("| key" in insights) == (profile == "key-to-door")


@pytest.mark.slow
def test_the_extraction_notebook_runs_on_key_to_door(in_tmp):
    s = tiny("key-to-door")
    assert main(["collect", "-c", "key-to-door", "--set", *s]) == 0
    assert main(["train", "-c", "key-to-door", "--run-dir", "runs/k", "--set", *s]) == 0
    nb = pm.execute_notebook(str(NB_DIR / "02_extract_attention.ipynb"), str(in_tmp / "02.ipynb"),
                             parameters={"profile": "key-to-door", "run_dir": "runs/k", "interactive": False,
                                         "overrides": s},
                             cwd=str(NB_DIR), kernel_name="python3", execution_timeout=600, progress_bar=False)
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= 1
