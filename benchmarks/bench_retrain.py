"""Retraining on compressed windows at equal supervision: is a retrained gap compression, or fewer targets?

A compressed window of K + 1 tokens carries K + 1 action targets; a full-context
training sequence carries ``seq_len`` (2 x n_transit). At the study's equal steps and
batch (as many windows as full-context sequences) a compressed model is therefore
supervised on (K + 1) / seq_len of the actions per step. This script retrains the
given cells with ``compress.batch = train.batch_size * seq_len // (K + 1)`` windows
per step (as many targets per step as the full-context model; same steps and seeds;
:func:`adkit.study.retrained.run_cell` with ``compress_kw={"batch": ...}``)
under ``RUN/study/equal-targets/`` and prints each beside the study's cell
(``RUN/study/retrained.csv``, made by ``adkit study``): return, share of the
retrained full-context return of the same seed, training step time.
Finished cells are kept in ``RUN/study/equal_targets.csv`` (``--out``) and not recomputed;
two processes with different ``--out`` run different cells side by side. Relative paths
resolve against the project home, as ``adkit``'s run directories do (``$ADKIT_HOME`` sets it).

    OMP_NUM_THREADS=1 python benchmarks/bench_retrain.py --run-dir runs/quick \\
        --compressors uniform exponential --budgets 20 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import pandas as pd

from adkit.paths import resolve
from adkit.run import Run
from adkit.study.cells import read_table, write_table
from adkit.study.retrained import COLUMNS, TABLE, equal_targets_cell, run_cell


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="a run whose `adkit study` has the full-context cells")
    p.add_argument("--compressors", nargs="+", default=["uniform"])
    p.add_argument("--budgets", type=int, nargs="+", default=[20, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="table of the finished cells (default RUN/study/equal_targets.csv)")
    args = p.parse_args()
    run = Run.open(args.run_dir)
    study = read_table(run.study / TABLE, COLUMNS)
    if study.empty:
        raise SystemExit(f"{run.study / TABLE} is empty: run `adkit study --run-dir {args.run_dir}` first")
    steps, episodes = int(study["train_steps"].iloc[0]), int(study["episodes"].iloc[0])
    out = resolve(args.out) if args.out else run.study / "equal_targets.csv"
    rows = read_table(out, COLUMNS).to_dict("records")
    done = {(r["compressor"], int(r["budget"]), int(r["seed"])) for r in rows}
    for seed in args.seeds:
        for name in args.compressors:
            for budget in args.budgets:
                if (name, budget, seed) in done:
                    continue
                equal = equal_targets_cell(run, budget)
                print(f"{name} @ {budget}, seed {seed}: {equal['compress_kw']['batch']} windows per step", flush=True)
                row = run_cell(run, name, budget, seed, "reencode", steps, episodes, {}, **equal)
                rows.append(row)
                write_table(pd.DataFrame(rows, columns=COLUMNS), out, COLUMNS)

    full = study[study["compressor"] == "none"].set_index("seed")["return"]
    mine = pd.DataFrame(rows, columns=COLUMNS)
    both = mine.merge(study, on=["compressor", "budget", "seed"], suffixes=("_equal", "_study"))
    both["full"] = both["seed"].map(full)
    print(f"\n{'cell':<22} {'study share':>12} {'equal-target share':>19} {'study step ms':>14} {'equal step ms':>14}")
    for _, r in both.sort_values(["compressor", "budget", "seed"]).iterrows():
        print(f"{r['compressor'] + ' @ ' + str(r['budget']) + ' s' + str(r['seed']):<22} "
              f"{r['return_study'] / r['full']:>12.1%} {r['return_equal'] / r['full']:>19.1%} "
              f"{r['train_step_ms_study']:>14.1f} {r['train_step_ms_equal']:>14.1f}")
    g = both.assign(study=both["return_study"] / both["full"], equal=both["return_equal"] / both["full"])
    print("\nmean +- std over seeds")
    print(g.groupby(["compressor", "budget"])[["study", "equal"]].agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
