"""Torch threads: one setting, or a fair share of the cores among the adkit processes running."""

import os
import subprocess
import sys

import pytest
import torch

from adkit import threads


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "REGISTRY", tmp_path / "jobs")
    monkeypatch.setattr(threads, "_state", {"registered": False, "checked": 0.0, "fixed": 0})
    monkeypatch.delenv("ADKIT_THREADS", raising=False)
    before = torch.get_num_threads()
    yield tmp_path / "jobs"
    torch.set_num_threads(before)


OTHER_JOB = """
import sys, time
from pathlib import Path
from adkit import threads
threads.REGISTRY = Path(sys.argv[1])
threads.configure()
print("registered", flush=True)
time.sleep(30)
"""


def test_each_process_takes_its_share_of_the_cores(registry, monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 8)
    assert threads.configure() == 8 and torch.get_num_threads() == 8  # alone: every core
    other = subprocess.Popen([sys.executable, "-c", OTHER_JOB, str(registry)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "registered\n"  # a second adkit job started
        (registry / "999999999").touch()  # one that died without cleaning up
        (registry / str(os.getppid())).touch()  # one that died and whose PID is now another (live) process's
        assert threads.jobs() == 2 and sorted(os.listdir(registry)) == sorted([str(os.getpid()), str(other.pid)])
        threads._state["checked"] = 0.0
        threads.rebalance()
        assert torch.get_num_threads() == 4
    finally:
        other.kill()
        other.wait()
    threads._state["checked"] = 0.0
    threads.rebalance()  # the other job ended
    assert torch.get_num_threads() == 8


def test_one_setting_fixes_every_process(registry, monkeypatch):
    monkeypatch.setenv("ADKIT_THREADS", "3")
    assert threads.configure() == 3 and threads.share() == 3
    monkeypatch.delenv("ADKIT_THREADS")
    assert threads.configure(2) == 2 and torch.get_num_threads() == 2  # fixed for this process from now on
    assert (registry / str(os.getpid())).exists()
