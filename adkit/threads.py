"""Torch threads: one setting for every command, and a fair share of the cores otherwise.

``$ADKIT_THREADS`` (what ``adkit --threads N`` sets) fixes the thread count of every adkit
process, notebooks' kernels included. Without it, each adkit process takes its share of the
cores, ``cores // (adkit processes running)``, and checks again every few seconds while it works
(:func:`rebalance`): two jobs on two cores run at one thread each instead of fighting. Measured
on 2 cores (a training step of the quick profile, ``benchmarks/bench_threads.py``): alone, 89 ms
at 2 threads, 145 ms at 1; two jobs at 2 threads each, 353 ms per step each (OpenMP threads spin
while they wait); two jobs with this share, 141 ms each. The study's worker processes split their
parent's share.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

# one empty file per running adkit process, named by its PID and locked (flock) while it lives: the
# kernel drops the lock when the process ends, however it ends, so a stale file is told from a live
# job even once its PID belongs to another process
REGISTRY = Path(tempfile.gettempdir()) / f"adkit-jobs-{os.getuid()}"
RECHECK_S = 5.0  # seconds between two looks at the registry
_state = {"registered": False, "checked": 0.0, "fixed": 0, "lock": None}


def _locked(entry: Path) -> bool:
    """Whether a live process holds ``entry``'s lock."""
    try:
        fd = os.open(entry, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops a lock taken above


def jobs() -> int:
    """adkit processes running now (this one included once registered); stale entries are removed."""
    count = 0
    for entry in REGISTRY.glob("[0-9]*"):  # not the dot-named temporaries of processes registering now
        if _locked(entry):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(count, 1)


def _register() -> None:
    """Add this process to the registry: locked before it appears under its name, so no other
    process ever sees it unlocked."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", dir=REGISTRY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held for this process's life (the fd stays open)
    me = REGISTRY / str(os.getpid())
    os.replace(tmp, me)
    atexit.register(me.unlink, missing_ok=True)
    _state["lock"], _state["registered"] = fd, True


def share() -> int:
    """The thread count this process should use now: what :func:`configure` fixed, ``$ADKIT_THREADS``,
    else its share of the cores."""
    fixed = _state["fixed"] or os.environ.get("ADKIT_THREADS")
    if fixed:
        return max(1, int(fixed))
    return max(1, cores() // jobs())


def cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cpusets, batch schedulers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure(threads: int | None = None) -> int:
    """Register this process and set torch's threads: ``threads`` (fixed for this process from now on)
    when given, else :func:`share`."""
    if threads:
        _state["fixed"] = int(threads)
    if not _state["registered"]:
        _register()
    n = share()
    torch.set_num_threads(n)
    _state["checked"] = time.monotonic()
    return n


def rebalance() -> None:
    """In long loops: follow the share when other adkit processes started or ended (cheap; at most
    one look at the registry every :data:`RECHECK_S` seconds, none for an unregistered process)."""
    if not _state["registered"] or time.monotonic() - _state["checked"] < RECHECK_S:
        return
    _state["checked"] = time.monotonic()
    n = share()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
