"""Two adkit jobs on one machine: torch threads against time per training step.

Each job trains the ``quick`` profile's model on random windows for ``--steps`` steps (after a
warm-up) and prints its median ms per step. Four arrangements, measured in one run:

* one job, every core (torch's default) and one job at one thread;
* two jobs at once, every core each (what two processes get without adkit's setting);
* two jobs at once, each with adkit's share (``adkit.threads.configure()``: cores // jobs).

    OMP_NUM_THREADS= python benchmarks/bench_threads.py --steps 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

JOB = r"""
import statistics, sys, time, torch
mode = sys.argv[1]
if mode == "share":
    from adkit import threads
    threads.configure()
    time.sleep(2.0)  # both jobs registered
    threads._state["checked"] = 0.0
    threads.rebalance()
else:
    torch.set_num_threads(int(mode))
from adkit.config import load_config
from adkit.model import ADTransformer
cfg = load_config("quick")
m = ADTransformer(cfg.model)
opt = torch.optim.AdamW(m.parameters())
B, L = cfg.train.batch_size, 2 * cfg.model.n_transit
g = torch.Generator().manual_seed(0)
x = dict(states=torch.randint(0, 9, (B, L, 2), generator=g), actions=torch.randint(0, 5, (B, L), generator=g),
         rewards=torch.zeros(B, L), next_states=torch.randint(0, 9, (B, L, 2), generator=g),
         queries=torch.randint(0, 9, (B, L, 2), generator=g))
times = []
for i in range(int(sys.argv[2]) + 3):
    t = time.perf_counter()
    loss = m(**x).logsumexp(-1).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t)
print(f"{torch.get_num_threads()} {1000 * statistics.median(times[3:]):.1f}")
"""


def jobs(modes: list[str], steps: int) -> list[tuple[int, float]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ADKIT_THREADS")}
    procs = [subprocess.Popen([sys.executable, "-c", JOB, mode, str(steps)], stdout=subprocess.PIPE, text=True,
                              env=env) for mode in modes]
    out = [p.communicate()[0].split() for p in procs]
    return [(int(t), float(ms)) for t, ms in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    cores = os.cpu_count()
    print(f"{time.strftime('%Y-%m-%d')}, {cores} cores; quick-profile training step, median ms over {args.steps}")
    rows = [("one job, every core", jobs([str(cores)], args.steps)),
            ("one job, one thread", jobs(["1"], args.steps)),
            ("two jobs, every core each", jobs([str(cores)] * 2, args.steps)),
            ("two jobs, adkit's share each", jobs(["share"] * 2, args.steps))]
    alone = rows[0][1][0][1]
    for label, res in rows:
        ms = statistics.mean(r[1] for r in res)
        print(f"  {label:<30} threads {'/'.join(str(r[0]) for r in res):<6} {ms:8.1f} ms/step  "
              f"(x{ms / alone:.2f} the lone job)")


if __name__ == "__main__":
    main()
