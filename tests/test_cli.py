"""The command line end to end on the tiny profile, and its error messages."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from adkit.cli import main
from adkit.config import load_config


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_collect_train_evaluate_doctor(in_tmp, capsys):
    assert main(["doctor", "-c", "tiny"]) == 1
    assert "next: adkit collect -c tiny" in capsys.readouterr().out
    assert main(["collect", "-c", "tiny"]) == 0
    assert len(list(Path("data").glob("darkroom-psrl-*.h5"))) == 1
    assert main(["train", "-c", "tiny", "--run-dir", "runs/tiny"]) == 0
    assert main(["evaluate", "--run-dir", "runs/tiny", "--episodes", "3", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "last 10 episodes" in out
    df = pd.read_csv("runs/tiny/eval/returns.csv")
    assert len(df) == 8 * 2 * 3 and Path("runs/tiny/eval/returns.png").exists()
    full = json.loads(Path("runs/tiny/eval/summary.json").read_text())
    assert full["mode"] == "full cache" and full["compressor"] == "none" and full["budget"] is None
    assert full["decision_ms"] > 0 and full["peak_mb"] > 0 and 0 <= full["last_share"]
    args = ["evaluate", "--run-dir", "runs/tiny", "--episodes", "3", "--seeds", "2",
            "--compressor", "h2o", "--budget", "4"]
    for kv in ("reencode", "evict"):
        assert main([*args, "--kv", kv, "--out", f"runs/tiny/eval/h2o-{kv}.csv"]) == 0
    cost = {kv: json.loads(Path(f"runs/tiny/eval/h2o-{kv}.json").read_text()) for kv in ("reencode", "evict")}
    assert [cost[kv]["mode"] for kv in cost] == ["reencode", "evict"]
    # h2o re-encoding scores the whole window first; the evicting cache attends to its 5 slots only
    assert cost["evict"]["flops_per_decision"] < full["flops_per_decision"] < cost["reencode"]["flops_per_decision"]
    assert main([*args[:-3], "profile", "--budget", "4", "--out", "runs/tiny/eval/profile.csv"]) == 0
    assert json.loads(Path("runs/tiny/eval/profile.json").read_text())["mode"] == "reencode"
    assert main([*args[:-4], "--kv", "evict"]) == 2
    assert "--kv evict needs --compressor" in capsys.readouterr().err
    assert main([*args[:-2], "--budget", "999", "--kv", "evict"]) == 2
    assert "keeps 1.." in capsys.readouterr().err
    assert main(["doctor", "-c", "tiny"]) == 0


def test_missing_upstream_names_the_command(in_tmp, capsys):
    assert main(["train", "-c", "tiny", "--run-dir", "runs/x"]) == 2
    assert "adkit collect -c tiny" in capsys.readouterr().err
    assert main(["evaluate", "--run-dir", "runs/nothing"]) == 2
    assert "adkit train" in capsys.readouterr().err
    assert main(["collect", "-c", "no-such-profile"]) == 2
    assert "profiles: [" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("adkit", path=str(Path(sys.executable).parent))
    assert exe, "the `adkit` console script is not installed next to this Python"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "collect" in out.stdout


def test_compress_demo_prints_every_strategy(capsys):
    from adkit.compress import COMPRESSORS

    assert main(["compress", "--demo"]) == 0
    out = capsys.readouterr().out
    assert all(f"({name})" in out for name in COMPRESSORS)
    assert out.count("Original length: 50") == len(COMPRESSORS) and "Memory reduction: 80.0%" in out


@pytest.mark.slow
def test_train_with_set_overrides_and_a_scorer(in_tmp, capsys, tiny_run):
    args = ["train", "-c", "tiny", "--run-dir", "runs/attn", "--set", "train.steps=4", "compress.strategy=attention",
            "compress.budget=5"]
    assert main(args) == 2
    assert "pass scorer=" in capsys.readouterr().err  # attention-scored: a scorer is needed
    assert main(args + ["--scorer", "runs/tiny"]) == 0
    cfg = load_config("runs/attn/config.yaml")
    assert (cfg.compress.strategy, cfg.compress.budget, cfg.train.steps) == ("attention", 5, 4)
    assert main(["train", "-c", "tiny", "--run-dir", "runs/x", "--set", "train.steps"]) == 2
    assert "--set takes SECTION.FIELD=VALUE, got 'train.steps'" in capsys.readouterr().err


@pytest.mark.slow
def test_set_applies_to_a_saved_run_and_paths_resolve_against_the_project(tiny_run, tmp_path, monkeypatch, capsys):
    """``--set`` on a run directory changes the saved config for this command only, and the same
    relative paths work from a subdirectory (a notebook kernel runs in ``notebooks/``)."""
    (tmp_path / "config" / "profiles").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("ADKIT_HOME")
    monkeypatch.chdir(tmp_path / "notebooks")
    assert main(["evaluate", "--run-dir", "runs/tiny", "--set", "eval.episodes=2", "eval.seeds=1"]) == 0
    df = pd.read_csv(tmp_path / "runs/tiny/eval/returns.csv")
    assert (df["episode"].max(), df["seed"].nunique()) == (2, 1)
    assert load_config(tmp_path / "runs/tiny/config.yaml").eval.episodes == tiny_run.cfg.eval.episodes
    assert main(["evaluate", "--run-dir", "runs/nothing"]) == 2
    assert f"{tmp_path / 'runs/nothing/config.yaml'} does not exist yet" in capsys.readouterr().err
