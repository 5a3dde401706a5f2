"""Training-free compression study on a trained run: return, agreement, KL and cost per compressor and budget.

    python benchmarks/bench_compress.py --run-dir RUN [--budgets 40 20 10 5] [--seeds 3] [--episodes 50]
                                        [--compressors recency h2o ...] [--out DIR]

Runs :func:`adkit.study.training_free_study` (every strategy, the ``none`` / ``full``
baselines, ``random``, and ``oracle`` on its reduced protocol, :data:`adkit.study.REDUCED`)
and prints the summary table (mean ± std over seeds). Resumable: a rerun with the same
arguments computes only the cells missing from ``DIR/training_free.csv`` (default
``RUN/study``), so a long sweep can run in pieces (e.g. under ``timeout``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from adkit.study.training_free import TABLE, markdown_summary, summary_table, training_free_study, write_outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a trained run (model.safetensors, config.yaml)")
    p.add_argument("--budgets", type=int, nargs="+", default=[40, 20, 10, 5], help="transitions kept")
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds 0..S-1")
    p.add_argument("--episodes", type=int, default=None, help="episodes per rollout (default: the run's)")
    p.add_argument("--compressors", nargs="+", default=None, help="strategies (default: all)")
    p.add_argument("--out", default=None, help="output directory (default: RUN/study)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.run_dir) / "study"
    t0 = time.perf_counter()
    df = training_free_study(args.run_dir, args.compressors, args.budgets, range(args.seeds), args.episodes,
                             out=out / TABLE)
    md, png = write_outputs(df, out)
    print(markdown_summary(df))
    s = summary_table(df)
    for value, what in (("decision_ms", "ms"), ("peak_mem_mb", "peak MB")):
        table = s.pivot(index="compressor", columns="budget", values=value).sort_index(axis=1, ascending=False)
        print(f"\none decision for all streams of a cell, {what} (compressor x budget; none/full at n_transit):")
        print(table.round(3).to_string(na_rep=""))
    print(f"\n{len(df)} cells in {out / TABLE} ({time.perf_counter() - t0:.0f} s this call); {md}, {png}")


if __name__ == "__main__":
    main()
