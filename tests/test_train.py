"""Trainer: targets, loss modes, logs, atomic resumable checkpoints, DDP replicas."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adkit.config import load_config
from adkit.data.collect import collect
from adkit.data.histories import WindowSampler
from adkit.data.histories import save as save_histories
from adkit.data.tokens import Tokens
from adkit.model import load
from adkit.model.train import loss_and_accuracy, lr_at, samplers, shared_clock, train
from adkit.run import Run


def test_transitions_become_tokens_with_shifted_queries_and_targets():
    b = {"states": torch.arange(8).view(1, 4, 2), "actions": torch.tensor([[0, 1, 2, 3]]),
         "rewards": torch.zeros(1, 4), "next_states": torch.zeros(1, 4, 2), "positions": torch.arange(4)[None],
         "episode_return": torch.tensor([[0.0, 1.0, 1.0, 2.0]])}
    tokens = Tokens.from_transitions(b)
    assert tokens["actions"].tolist() == [[0, 1, 2]] and tokens.targets.tolist() == [[1, 2, 3]]
    assert tokens["queries"].tolist() == b["states"][:, 1:].tolist()  # q_k = s_{k+1}
    assert tokens["episode_return"].tolist() == [[0.0, 1.0, 1.0]]
    assert sorted(tokens) == sorted(["states", "actions", "rewards", "next_states", "queries", "positions",
                                     "episode_return"])


def test_loss_modes():
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])  # (B=1, L=2, A=2)
    targets = torch.tensor([[1, 1]])
    loss_all, acc_all = loss_and_accuracy(logits, targets, "all")
    loss_last, acc_last = loss_and_accuracy(logits, targets, "last")
    assert acc_all == 0.5 and acc_last == 1.0
    assert loss_last.item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-5.0))).item(), rel=1e-5)
    assert loss_all > loss_last


def test_schedule_warms_up_then_decays(tiny_cfg):
    t = tiny_cfg.train
    lrs = [lr_at(s / t.steps, t, s) for s in range(t.steps + 1)]
    peak = lrs.index(max(lrs))
    assert peak == t.warmup_steps - 1 and lrs[0] < lrs[peak]
    assert lrs[-1] == pytest.approx(t.lr * t.min_lr_ratio)


def test_train_writes_checkpoint_log_and_learns(tmp_path, tiny_cfg, tiny_hist):
    run = train(Run.create(tiny_cfg, tmp_path / "run"), tiny_hist, progress=False)
    for name in ("model.safetensors", "model.json", "config.yaml", "train_log.csv", "train_state.json"):
        assert (run / name).exists()
    log = pd.read_csv(run / "train_log.csv")
    assert list(log.columns) == ["step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert log["step"].iloc[-1] == tiny_cfg.train.steps
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0] or log["train_loss"].iloc[-1] < 1.5
    assert load(run).env == "darkroom"


def test_resume_continues_exactly(tmp_path, tiny_cfg, tiny_hist):
    whole = train(Run.create(tiny_cfg, tmp_path / "whole"), tiny_hist, progress=False)
    train(Run.create(tiny_cfg, tmp_path / "parts"), tiny_hist, progress=False, until=12)  # "crash" after 12 steps
    assert json.loads((tmp_path / "parts" / "train_state.json").read_text())["step"] == 12
    parts = train(Run.create(tiny_cfg, tmp_path / "parts"), tiny_hist, progress=False)
    a, b = load(whole).state_dict(), load(parts).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_episode_stride_reaches_both_samplers(tiny_hist):
    cfg = load_config("tiny", {"train": {"episode_stride": 2, "seq_len": 30}})
    n_tasks, n_streams, n_steps = tiny_hist.shape
    train_s, val_s = samplers(cfg, tiny_hist)
    n_val = len(val_s.streams)
    assert train_s.arrays["actions"].shape[1:] == (2 * (n_streams - n_val), n_steps // 2)
    assert val_s.arrays["actions"].shape[1:] == (2 * n_val, n_steps // 2)


def test_resuming_with_another_config_is_refused(tmp_path, tiny_cfg, tiny_hist):
    train(Run.create(tiny_cfg, tmp_path / "run"), tiny_hist, progress=False, until=4)
    other = load_config("tiny", {"train": {"lr": 0.5, "episode_stride": 2, "seq_len": 30}})
    with pytest.raises(ValueError, match=r"another config \(train.episode_stride: 1 -> 2, train.lr: .* -> 0.5, "
                                         r"train.seq_len: .* -> 30\); resume it with its own"):
        train(Run.create(other, tmp_path / "run"), tiny_hist, progress=False)
    longer = load_config("tiny", {"train": {"steps": tiny_cfg.train.steps + 4}, "eval": {"seeds": 7}})
    # more steps and another evaluation: a resume
    train(Run.create(longer, tmp_path / "run"), tiny_hist, progress=False, until=6)
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["step"] == 6


def test_histories_for_another_family_are_refused(tmp_path, tiny_hist):
    cfg = load_config("tiny", {"env": {"name": "key-to-door"}})
    with pytest.raises(ValueError, match="histories are for 'darkroom'"):
        train(Run.create(cfg, tmp_path / "run"), tiny_hist, progress=False)


def test_a_context_shorter_than_the_sources_episode_is_refused(tmp_path):
    cfg = load_config("tiny", {"env": {"name": "key-to-door", "train_tasks": 2, "test_tasks": 1}})
    h = collect(cfg, progress=False)
    with pytest.raises(ValueError, match="n_transit is 20, shorter than one key-to-door episode .50 steps"):
        train(Run.create(cfg, tmp_path / "run"), h, progress=False)


def failure(stderr: str) -> str:
    """A failed subprocess's stderr without its progress bars, whose redraws would crowd out each rank's
    error from the message."""
    return "\n".join(line for line in stderr.splitlines() if "it/s]" not in line and "s/it]" not in line)[-6000:]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_keep_replicas_identical(tmp_path, tiny_hist):
    hist = save_histories(tiny_hist, tmp_path / "h.h5")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adkit.cli", "train", "-c", "tiny", "--run-dir", str(tmp_path / "run"), "--histories", str(hist)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, failure(out.stderr)
    sums = json.loads((tmp_path / "run" / "replicas.json").read_text())["checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert log["step"].iloc[-1] == 30
    states = json.loads((tmp_path / "run" / "train_state.json").read_text())["sampler_rng"]
    assert len(states) == 2 and states[0] != states[1]  # each rank resumes its own batch stream


def _clock_rank(rank: int, store: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    seconds = shared_clock([3.5, 7.25][rank])  # rank 1's clock runs ahead
    Path(f"{out}.{rank}").write_text(repr(seconds))
    torch.distributed.destroy_process_group()


def test_under_ddp_every_rank_reads_the_slowest_ranks_clock(tmp_path):
    torch.multiprocessing.spawn(_clock_rank, args=(str(tmp_path / "store"), str(tmp_path / "clock")), nprocs=2)
    assert [float((tmp_path / f"clock.{r}").read_text()) for r in (0, 1)] == [7.25, 7.25]


@pytest.mark.slow
def test_torchrun_with_a_time_budget_stops_every_rank_at_the_same_step(tmp_path, tiny_hist):
    hist = save_histories(tiny_hist, tmp_path / "h.h5")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adkit.cli", "train", "-c", "tiny", "--run-dir", str(tmp_path / "run"), "--histories", str(hist),
           "--time-budget", "3", "--set", "train.steps=100000"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, failure(out.stderr)
    sums = json.loads((tmp_path / "run" / "replicas.json").read_text())["checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # same steps at the same learning rates
    assert 0 < pd.read_csv(tmp_path / "run" / "train_log.csv")["step"].iloc[-1] < 100000


def test_tensorboard_event_files_hold_the_logged_curves(tmp_path, tiny_hist):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = load_config("tiny", {"train": {"tensorboard": True}})
    run = Run.create(cfg, tmp_path / "run")
    train(run, tiny_hist, progress=False)
    events = event_accumulator.EventAccumulator(str(run.tensorboard))
    events.Reload()
    log = pd.read_csv(run.train_log)
    val = [(e.step, e.value) for e in events.Scalars("loss/val")]
    assert [s for s, _ in val] == log["step"].tolist()
    assert [v for _, v in val] == pytest.approx(log["val_loss"].tolist(), abs=1e-4)


@pytest.mark.slow
def test_killed_at_random_points_a_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_hist):
    """SIGKILL mid-run (mid-checkpoint included), resume, repeat: nothing finished is lost, and the
    final weights and log equal an uninterrupted run's."""
    import random
    import signal
    import time

    cfg = load_config("tiny", {"train": {"val_every": 2, "steps": 200}})
    whole = Run.create(cfg, tmp_path / "whole")
    train(whole, tiny_hist, progress=False)
    save_histories(tiny_hist, whole.histories)
    cmd = [sys.executable, "-m", "adkit.cli", "--threads", "1", "train", "-c", "tiny", "--run-dir",
           str(tmp_path / "killed"), "--set", "train.val_every=2", "train.steps=200"]
    env = {**os.environ, "ADKIT_HOME": str(whole.home)}
    rng, committed = random.Random(0), []
    record = tmp_path / "killed" / "checkpoint.json"

    def step() -> int:
        try:
            return json.loads(record.read_text())["step"]
        except (OSError, ValueError):  # none yet, or being replaced
            return 0

    for _ in range(3):  # killed 0-0.5 s after it commits its next checkpoint: mid-training, maybe mid-checkpoint
        before = committed[-1] if committed else 0
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # start-up takes seconds, longer on a loaded machine
        while step() <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed.append(step())
    assert 0 < committed[-1] < 200 and committed == sorted(committed)  # it trained, and was stopped for real
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, failure(out.stderr)
    killed = Run.open(tmp_path / "killed")
    a, b = load(whole.dir).state_dict(), load(killed.dir).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    pd.testing.assert_frame_equal(pd.read_csv(whole.train_log).drop(columns="seconds"),
                                  pd.read_csv(killed.train_log).drop(columns="seconds"))
    assert not list(killed.dir.glob("*.next"))


def test_a_truncated_training_state_says_what_to_do(tmp_path, tiny_hist):
    from adkit.model import CheckpointError

    run = Run.create(load_config("tiny"), tmp_path / "run")
    train(run, tiny_hist, progress=False, until=15)
    run.train_state_json.write_text('{"step": 1')  # torn
    with pytest.raises(CheckpointError, match="train_state.json or .* is truncated or foreign.*start over"):
        train(run, tiny_hist, progress=False)
    assert load(run.dir).env == "darkroom"  # the model itself still loads


def test_an_interrupted_commit_is_finished_and_a_plain_save_is_not_refused(tmp_path, tiny_hist):
    from adkit.model import save as save_model
    from adkit.model.checkpoint import PENDING, commit

    run = Run.create(load_config("tiny"), tmp_path / "run")
    train(run, tiny_hist, progress=False, until=15)
    model = load(run.dir)
    names = save_model(model, run.dir, suffix=PENDING)
    real_replace = os.replace
    try:  # the process stops right after the commit record, before moving the files in
        os.replace = lambda *a: None
        commit(run.dir, names, 15)
    finally:
        os.replace = real_replace
    assert list(run.dir.glob("*" + PENDING))
    train(run, tiny_hist, progress=False)  # resumes: the commit is finished first
    assert not list(run.dir.glob("*" + PENDING))
    save_model(load(run.dir), run.dir)  # a model saved by hand into a trained run directory
    assert load(run.dir).env == "darkroom" and not (run.dir / "checkpoint.json").exists()


def test_held_out_tasks_never_reach_training(tiny_cfg, tiny_hist):
    """Mark every held-out task's transitions; no training or validation batch may ever hold one."""
    held = tiny_hist.task_index(Run.create(tiny_cfg).test_tasks)
    marked = dataclasses.replace(tiny_hist, actions=tiny_hist.actions.copy())
    marked.actions[held] = 99  # no real action has this value
    for sampler in samplers(tiny_cfg, marked):
        for _ in range(50):
            assert (sampler.sample(64)["actions"] != 99).all()
    assert (marked.actions == 99).sum() == len(held) * np.prod(tiny_hist.shape[1:])  # the mark is there to find


def test_training_learns_to_predict_actions_on_held_out_tasks(tmp_path, tiny_hist):
    """After a short training the action loss on windows of held-out tasks is well below the uniform
    policy's ln 5 and the accuracy well above chance (1/5)."""
    cfg = load_config("tiny", {"train": {"steps": 150}})
    run = train(Run.create(cfg, tmp_path / "run"), tiny_hist, progress=False)
    model = load(run)
    held = tiny_hist.task_index(Run.create(cfg).test_tasks)
    windows = WindowSampler(tiny_hist, held, np.arange(tiny_hist.shape[1]), cfg.model.n_transit + 1, seed=9)
    tokens = Tokens.from_transitions(windows.sample(256))
    with torch.no_grad():
        loss, acc = loss_and_accuracy(model(**tokens), tokens.targets, "all")
    assert loss < 0.7 * math.log(5) and acc > 0.4, (float(loss), float(acc))
