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
import os
import tempfile
import time
from pathlib import Path

import torch

REGISTRY = Path(tempfile.gettempdir()) / f"adkit-jobs-{os.getuid()}"  # one empty file per running adkit process
RECHECK_S = 5.0  # seconds between two looks at the registry
_state = {"registered": False, "checked": 0.0, "fixed": 0}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def jobs() -> int:
    """adkit processes running now (this one included once registered); stale entries are removed."""
    count = 0
    for entry in REGISTRY.glob("*"):
        if entry.name.isdigit() and _alive(int(entry.name)):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(count, 1)


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
        REGISTRY.mkdir(parents=True, exist_ok=True)
        me = REGISTRY / str(os.getpid())
        me.touch()
        atexit.register(me.unlink, missing_ok=True)
        _state["registered"] = True
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
