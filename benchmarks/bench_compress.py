"""Training-free compression study on a trained run: return, agreement, KL and cost per compressor and budget.

    python benchmarks/bench_compress.py --run-dir RUN [--budgets 40 20 10 5] [--seeds 3] [--episodes 50]
                                        [--compressors recency h2o ...] [--out DIR]

Runs :func:`adkit.study.training_free.training_free_study` (every strategy, the ``none`` /
``full`` baselines, ``random``, and ``oracle`` on its reduced protocol,
:data:`adkit.study.training_free.REDUCED`) and prints the summary table (mean ± std over
seeds). The defaults are the script's own, not the run's ``study`` section: every strategy,
budgets 40 20 10 5, 3 seeds and the run's ``eval.episodes``; agreement and KL are measured at
the run's ``study.decisions`` decisions per stream (16 unless its config says otherwise).
Resumable: a rerun with the same arguments computes only the cells missing from
``DIR/training_free.csv`` (default ``RUN/study``), so a long sweep can run in pieces (e.g.
under ``timeout``). Relative paths resolve against the project home, as ``adkit``'s run
directories do (``$ADKIT_HOME`` sets it).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from adkit.paths import resolve
from adkit.run import Run
from adkit.study.summaries import summary_table
from adkit.study.training_free import TABLE, markdown_summary, study_compressors, training_free_study, write_outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a trained run (model.safetensors, config.yaml)")
    p.add_argument("--budgets", type=int, nargs="+", default=[40, 20, 10, 5], help="transitions kept")
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds 0..S-1")
    p.add_argument("--episodes", type=int, default=None, help="episodes per rollout (default: the run's eval.episodes)")
    p.add_argument("--compressors", nargs="+", default=None, help="strategies (default: all)")
    p.add_argument("--out", default=None, help="output directory (default: RUN/study)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = Run.open(args.run_dir)
    cfg = run.cfg  # episodes per rollout come from the study section: --episodes, else the run's eval.episodes
    run = run.with_config(dataclasses.replace(cfg, study=dataclasses.replace(
        cfg.study, episodes=args.episodes or cfg.eval.episodes)))
    out = resolve(args.out) if args.out else run.study
    t0 = time.perf_counter()
    df = training_free_study(run, args.compressors or study_compressors(), args.budgets, range(args.seeds),
                             out=out / TABLE)
    md, png, cost = write_outputs(df, out)
    print(markdown_summary(df))
    s = summary_table(df)
    for value, what in (("decision_ms", "ms"), ("peak_mem_mb", "peak MB")):
        table = s.pivot_table(index=["compressor", "kv"], columns="budget", values=value)
        table = table.sort_index(axis=1, ascending=False)
        print(f"\none decision for all streams of a cell, {what} (compressor x budget; none/full at n_transit):")
        print(table.round(3).to_string(na_rep=""))
    print(f"\n{len(df)} cells in {out / TABLE} ({time.perf_counter() - t0:.0f} s this call); {md}, {png}, {cost}")


if __name__ == "__main__":
    main()
