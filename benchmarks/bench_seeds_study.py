"""The training-free compression study over several training seeds: per budget the best strategy,
its spread, and whether the strategy recommended from the attention beats ``random`` by more
than the spread.

    OMP_NUM_THREADS=1 python benchmarks/bench_seeds_study.py \
        --runs results/key-to-door/seed0 results/key-to-door/seed1 results/key-to-door/seed2 \
        --budgets 50 25 --kv evict --episodes 50 [--compressors recency h2o ...] [--out results/k2d-study.csv]
        [--retrain reward-recent ... [--fine-tune STEPS] [--workers 2] [--retrain-only]]
        [--figure shares.png [--summary shares.csv]]
    python benchmarks/bench_seeds_study.py --cells cell-a.csv cell-b.csv ... --recommended recency [--out cells.csv]
        [--summary shares.csv] [--figure shares.png]
    python benchmarks/bench_seeds_study.py --redraw docs/key-to-door-compression.csv [more.csv ...] \
        --recommended recency --figure docs/key-to-door-compression.png

Each run (one training seed of a profile, e.g. the run folders ``bench_incontext.py`` keeps) gets
:func:`adkit.study.training_free.training_free_study` on its held-out tasks with evaluation seed 0,
into its own ``RUN/study/training_free.csv`` (resumable: finished cells are kept). Shares are each
cell's return over the same run's full-context return on the same streams; spread is over the
training seeds (sample std, ddof=1, and min-max). The recommended strategy is the one notebook 03
recommends most often across layers of each run (``RUN/attention/insights.json``; ``adkit attention``
writes it), else ``--recommended``.

``--retrain NAME ...`` also trains each NAME again for its compressed context at each budget and each ``--kv``
(``evict``: the evicting cache's per-query keep masks, evaluated with that cache; ``reencode``: windows
compressed as a re-encoding rollout compresses them, evaluated so; strategies without an evicting form get
``reencode`` only), with each run's own config and training seed, on the run's ``eval.seeds`` streams per
held-out task. From scratch (the run's steps), its share is over the run's own full-context model on the
same streams (the retrained study's ``none`` model would be that same model: same config, seed and steps).
With ``--fine-tune STEPS`` each cell starts from the run's model and trains STEPS steps (``study.init:
run``) in the run's retrained study (:func:`adkit.study.retrained.retrained_study`, ``--workers`` cells at
once), and its share is over the run's model fine-tuned as long with its full context (the study's
``none`` cell). Cells train in ``RUN/study/retrained/`` and resume if interrupted; ``--retrain-only``
skips the training-free part.
``--figure`` draws every share computed (finished cells are read back, not rerun) against the budget, a
panel per part (:func:`adkit.study.figures.plot_shares_over_seeds`), from the shares over training seeds
(:func:`adkit.study.summaries.over_seeds`), which ``--summary`` saves as CSV: keep it beside the figure,
and ``--redraw CSV ...`` draws the figure again from such tables alone, without the runs. ``--cells CSV ...``
reads the cells that earlier invocations wrote with ``--out`` (one cell per invocation, say, run two at a
time) and summarises them together, as if one invocation had computed them all.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter

import pandas as pd

from adkit.analysis.insights import markdown_table
from adkit.compress.evict import kv_forms
from adkit.io import atomic_path
from adkit.model.checkpoint import load
from adkit.model.evaluate import rollout
from adkit.paths import resolve
from adkit.plots import save_png
from adkit.run import Run
from adkit.study.cells import share
from adkit.study.figures import plot_shares_over_seeds
from adkit.study.retrained import equal_targets_cell, recommended, retrained_study, run_cell, strategy_kwargs
from adkit.study.summaries import by_budget, over_seeds, verdicts
from adkit.study.training_free import study_compressors, training_free_study


def per_seed(run_dirs: list[str], compressors, budgets, kvs, episodes: int) -> pd.DataFrame:
    tables = []
    for i, d in enumerate(run_dirs):
        run = Run.open(resolve(d))
        run = run.with_config(dataclasses.replace(run.cfg, study=dataclasses.replace(run.cfg.study, episodes=episodes)))
        df = training_free_study(run, compressors, budgets, seeds=[0], kvs=kvs, reduced={})
        tables.append(df.assign(run=str(d), train_seed=i, share=share(df)))
        print(f"{d}: {len(df)} cells", flush=True)
    return pd.concat(tables, ignore_index=True)


def retrained(run_dirs: list[str], names: list[str], budgets, kvs, episodes: int,
              equal_targets: bool = False) -> pd.DataFrame:
    """Each of ``names`` retrained from scratch for each of ``kvs``, per run and budget, against the run's
    own full-context model; with ``equal_targets`` re-encoded cells train on as many action targets per
    step as that model (:func:`equal_targets_cell`)."""
    rows = []
    for i, d in enumerate(run_dirs):
        run = Run.open(resolve(d))
        seed = run.cfg.train.seed
        streams = [1000 * seed + j for j in range(run.cfg.eval.seeds)]  # the streams run_cell evaluates on
        scorer = load(run.weights)
        full = rollout(scorer, run.cfg.env.name, run.test_tasks, seeds=streams, episodes=episodes,
                       progress=False).returns.mean()
        extra = strategy_kwargs(run, scorer, names)
        for name in names:
            for kv in kv_forms(name, kvs):
                for budget in budgets:
                    equal = equal_targets and kv == "reencode"
                    more = equal_targets_cell(run, budget) if equal else {}
                    row = run_cell(run, name, budget, seed, kv, run.cfg.train.steps, episodes, extra, progress=True,
                                   **more)
                    rows.append({**row, "full_return": float(full), "run": str(d), "train_seed": i,
                                 "equal_targets": equal})
                    print(f"{d}: {name} @ {budget} retrained ({kv}): {row['return']:.3f} against "
                          f"{full:.3f} full context ({100 * row['return'] / full:.1f}%)", flush=True)
    df = pd.DataFrame(rows)
    return df.assign(share=share(df))


def fine_tuned(run_dirs: list[str], names: list[str], budgets, kvs, episodes: int, steps: int,
               workers: int) -> pd.DataFrame:
    """Each run's retrained study for ``kvs``, every cell (and the full-context ``none``) fine-tuned from the
    run's model for ``steps`` steps."""
    tables = []
    for i, d in enumerate(run_dirs):
        run = Run.open(resolve(d))
        st = dataclasses.replace(run.cfg.study, init="run", steps=steps, episodes=episodes, workers=workers)
        run = run.with_config(dataclasses.replace(run.cfg, study=st))
        df = retrained_study(run, names, budgets, seeds=[run.cfg.train.seed], kvs=kvs)
        tables.append(df.assign(run=str(d), train_seed=i))
        print(f"{d}: {len(df)} fine-tuned cells", flush=True)
    df = pd.concat(tables, ignore_index=True)
    return df.assign(share=share(df))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", help="run directories, one per training seed")
    p.add_argument("--budgets", type=int, nargs="+", help="transitions kept")
    p.add_argument("--kv", nargs="+", choices=["reencode", "evict"], default=["evict"])
    p.add_argument("--compressors", nargs="+", default=None, help="default: every strategy")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--recommended", default="attention", help="when a run has no insights.json")
    p.add_argument("--out", default=None, help="also write every cell of every run here (CSV)")
    p.add_argument("--retrain", nargs="+", default=None, help="also retrain these strategies for each --kv")
    p.add_argument("--fine-tune", type=int, default=0, metavar="STEPS",
                   help="with --retrain: start each model from the run's and train STEPS steps (0: from scratch)")
    p.add_argument("--equal-targets", action="store_true",
                   help="with --retrain from scratch and --kv reencode: as many action targets per step as the "
                        "full-context model (each compressed window gives K + 1; an evicting cache's window, all)")
    p.add_argument("--workers", type=int, default=1, help="with --fine-tune: cells trained at once")
    p.add_argument("--retrain-only", action="store_true", help="with --retrain: skip the training-free study")
    p.add_argument("--figure", default=None, help="also draw the shares against the budget here (PNG)")
    p.add_argument("--summary", default=None, help="also write the shares over training seeds here (CSV)")
    p.add_argument("--cells", nargs="+", default=None, metavar="CSV",
                   help="instead of --runs: summarise the cells of earlier --out files together")
    p.add_argument("--redraw", nargs="+", default=None, metavar="CSV",
                   help="only draw --figure from --summary CSVs (drawn together)")
    args = p.parse_args()
    if args.redraw:
        if not args.figure:
            p.error("--redraw needs --figure")
        table = pd.concat([pd.read_csv(resolve(c)) for c in args.redraw], ignore_index=True)
        print(f"figure: {save_png(plot_shares_over_seeds(table, args.recommended), resolve(args.figure))}")
        return
    if args.cells:
        df = read_cells(args.cells)
        table = over_seeds(df)
        report(table, args.recommended)
        write_outputs(df, args.out, args.summary, args.figure, args.recommended)
        return
    if args.equal_targets and (args.fine_tune or "reencode" not in args.kv):
        p.error("--equal-targets is for re-encoded cells trained from scratch: --kv reencode, no --fine-tune")
    if not (args.runs and args.budgets):
        p.error("--runs and --budgets are required (unless --cells or --redraw)")
    df = pd.DataFrame()
    recs = [recommended(Run.open(resolve(d))) for d in args.runs]
    rec = Counter(r for r in recs if r).most_common(1)[0][0] if any(recs) else args.recommended
    if not args.retrain_only:
        compressors = args.compressors or [c for c in study_compressors() if c != "oracle"]
        df = per_seed(args.runs, compressors, args.budgets, args.kv, args.episodes)
        table = over_seeds(df)
        print(f"\nshare of the full-context return over {len(args.runs)} training seeds (evaluation seed 0, "
              f"{args.episodes} episodes, held-out tasks):")
        print(f"recommended from the attention: `{rec}` (per run: {recs})")
        report(table, rec)
    if args.retrain:
        if args.fine_tune:
            re_df = fine_tuned(args.runs, args.retrain, args.budgets, args.kv, args.episodes, args.fine_tune,
                               args.workers)
        else:
            re_df = retrained(args.runs, args.retrain, args.budgets, args.kv, args.episodes, args.equal_targets)
        df = pd.concat([df, re_df], ignore_index=True)
    write_outputs(df, args.out, args.summary, args.figure, rec)
    if args.retrain:
        print("\nretrained, share of the full-context return on the same streams:")
        report(over_seeds(re_df), rec)


def report(table: pd.DataFrame, rec: str) -> None:
    """Print the shares over training seeds (:func:`over_seeds`) as a strategy x budget table per part of the
    study, then the verdicts."""
    for part, grid in by_budget(table).items():
        print(f"\n{part}: share of the full-context return, mean ± sample std over training seeds (min-max)")
        print(markdown_table(grid))
    print("\n" + "\n".join(verdicts(table, rec)))


def read_cells(paths: list[str]) -> pd.DataFrame:
    """The cells of earlier ``--out`` files, each cell once."""
    df = pd.concat([pd.read_csv(resolve(c)) for c in paths], ignore_index=True)
    key = [k for k in ("run", "mode", "kv", "init", "equal_targets", "compressor", "budget") if k in df.columns]
    twice = df[df.duplicated(key, keep=False)]
    if len(twice):
        raise SystemExit(f"these cells are in more than one file; keep one of each:\n{twice[key].to_string()}")
    return df


def write_outputs(df: pd.DataFrame, out: str | None, summary: str | None, figure: str | None, rec: str) -> None:
    """The cells to ``out``, their shares over training seeds to ``summary`` (both CSV, atomically) and
    drawn to ``figure``."""
    if out:
        with atomic_path(resolve(out)) as tmp:
            df.to_csv(tmp, index=False)
    table = over_seeds(df)
    if summary:
        with atomic_path(resolve(summary)) as tmp:
            table.to_csv(tmp, index=False)
    if figure:
        print(f"figure: {save_png(plot_shares_over_seeds(table, rec), resolve(figure))}")

if __name__ == "__main__":
    main()
