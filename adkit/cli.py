"""The ``adkit`` command line: one subcommand per pipeline stage.

    adkit doctor                          what is installed, what exists, what to run next
    adkit collect -c CONFIG [-o FILE]     learning histories of the source algorithm
    adkit train -c CONFIG --run-dir DIR   checkpoint, resolved config, training log
    adkit evaluate --run-dir DIR          in-context returns on the held-out tasks (CSV + figure)
    adkit attention --run-dir DIR         attention file, insight report, figures (RUN/attention, RUN/figs)
    adkit study --run-dir DIR             compression study, retrained and training-free (RUN/study)
    adkit compress --demo                 what each compressor keeps, on dummy data
    adkit demo [--profile demo]           the five notebooks headless, then figs/REPORT.md

Every subcommand takes ``--set SECTION.FIELD=VALUE ...``: on a profile (collect, train,
doctor, demo) or on the config saved in a run directory (evaluate, attention, study).
Relative paths resolve against the project (``$ADKIT_HOME`` or the directory holding
``config/profiles``). Stage modules are imported per subcommand, so ``adkit --help`` is quick.
``adkit --threads N SUBCOMMAND`` fixes torch's threads (see :mod:`adkit.threads`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from adkit.paths import resolve


def _profile_run(args):
    """The run of a profile subcommand (collect, train): the profile with ``--set`` applied."""
    from adkit.config import load_config, parse_overrides
    from adkit.run import Run

    return Run.create(load_config(args.config, parse_overrides(args.set)), getattr(args, "run_dir", None))


def _saved_run(args, **more: object):
    """The run trained in ``--run-dir``, its saved config with ``--set`` (and ``more`` fields) applied."""
    from adkit.config import merge, parse_overrides
    from adkit.run import Run

    overrides = parse_overrides(args.set)
    merge(overrides, {section: {k: v for k, v in fields.items() if v is not None} for section, fields in more.items()})
    return Run.open(args.run_dir, overrides)


def cmd_collect(args) -> int:
    from adkit.data.collect import collect_to_file

    run = _profile_run(args)
    path, seconds = collect_to_file(run.cfg, resolve(args.out) if args.out else run.histories)
    print(f"wrote {path} ({run.cfg.collect.source}, {seconds:.1f} s)")
    return 0


def cmd_train(args) -> int:
    from adkit.data.collect import load_for
    from adkit.model.checkpoint import load as load_model
    from adkit.model.train import distributed, train
    from adkit.run import require

    run = _profile_run(args)
    hist = resolve(args.histories) if args.histories else run.histories
    h = load_for(run.cfg, require(hist, f"`adkit collect -c {run.cfg.profile} -o {hist}` (notebook 01_train)"))
    scorer = load_model(resolve(args.scorer)) if args.scorer else None
    if args.tensorboard:
        run = run.with_config(dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, tensorboard=True)))
    train(run, h, time_budget_s=args.time_budget, scorer=scorer)
    print(f"trained {run.dir} (log: {run.train_log})")
    if distributed():
        _leave_rank()
    return 0


def _leave_rank() -> None:
    """End a finished torchrun rank without tearing the interpreter down. Gloo's worker threads free
    the last collectives' tensors after those complete; one that does so while Python finalizes needs
    the GIL, cannot have it, and aborts the process ("terminate called without an active exception",
    SIGABRT), so torchrun fails a job whose files are all written. Everything is saved (atomically) and
    closed by now; only stdout and stderr are left to flush."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_evaluate(args) -> int:
    from adkit.compress.context import build
    from adkit.model.checkpoint import load
    from adkit.model.evaluate import rollout, summary, write_summary
    from adkit.plots import plot_curves, save_png
    from adkit.study.retrained import strategy_kwargs

    run = _saved_run(args, eval={"episodes": args.episodes, "seeds": args.seeds, "batch_tasks": args.tasks,
                                 "greedy": args.greedy or None})
    cfg = run.cfg
    model = load(run.weights)
    tasks = {"test": run.test_tasks, "train": run.train_tasks, "all": run.train_tasks + run.test_tasks}[
        cfg.eval.batch_tasks]
    compressor = None
    if args.compressor:
        if args.budget is None:
            raise ValueError("--compressor needs --budget (transitions kept)")
        kw = strategy_kwargs(run, model, [args.compressor]).get(args.compressor, {})  # the profile's rule
        compressor = build(args.compressor, args.budget, model, cfg.env.name, **kw)
    elif args.kv == "evict":
        raise ValueError("--kv evict needs --compressor and --budget (what the cache keeps)")
    res = rollout(model, cfg.env.name, tasks, seeds=range(cfg.eval.seeds), episodes=cfg.eval.episodes,
                  greedy=cfg.eval.greedy, compressor=compressor, kv=args.kv)
    out = resolve(args.out) if args.out else run.returns
    res.write_csv(out)
    fig = plot_curves(res, title=f"{cfg.env.name}: in-context return on {len(tasks)} tasks")
    save_png(fig, out.with_suffix(".png"))
    about = write_summary(res, run.eval_summary if out == run.returns else out.with_suffix(".json"),
                          compressor=args.compressor or "none")
    s, c = summary(res), res.cost
    print(f"wrote {out}, {out.with_suffix('.png')} and {about}")
    print(f"decision ({c.mode}{'' if c.budget is None else f', {c.budget} kept'}): {c.decision_ms:.2f} ms "
          f"median for {c.streams} streams at {c.threads} threads, peak {c.peak_mb:.1f} MB, "
          f"{c.flops_per_decision / 1e6:.2f} MFLOP per stream")
    print(f"first episode {s['first_episode']:.2f}, last 10 episodes {s['last_mean']:.2f} "
          f"of optimal {s['optimal_mean']:.2f} ({100 * s['last_share']:.0f}%), "
          f"80% of optimal reached at episode {s['episodes_to_80pct']}; first reward at episode "
          f"{s['first_reward_median']:.1f} (median over tasks x seeds), never for {100 * s['never_rewarded']:.0f}%")
    return 0


def cmd_study(args) -> int:
    from adkit.study import retrained, training_free
    from adkit.study.cells import CellsFailed

    run = _saved_run(args, study={"seeds": args.seeds, "episodes": args.episodes, "steps": args.steps,
                                  "init": args.init, "workers": args.workers, "executor": args.executor,
                                  "address": args.address})
    if args.mode == "training-free":
        df = training_free.training_free_study(run, args.compressors, args.budgets, kvs=args.kv)
        md, png, cost = training_free.write_outputs(df, run.study)
        print(training_free.markdown_summary(df))
        print(f"wrote {md}, {png} and {cost}")
        return 0
    try:
        df = retrained.compression_study(run, args.compressors, args.budgets, kvs=args.kv)
    except CellsFailed as e:
        print(f"adkit study: {e}", file=sys.stderr)
        return 1
    print(retrained.markdown_summary(df))
    print("\n".join(retrained.headline(df, run)))
    print(f"wrote {run.study / retrained.RESULTS}, results.md and figures")
    return 0


def cmd_doctor(args) -> int:
    from adkit.config import parse_overrides
    from adkit.doctor import doctor

    return doctor(args.config, args.run_dir, parse_overrides(args.set))


def cmd_compress(args) -> int:
    from adkit import compress

    if not args.demo:
        raise SystemExit("usage: adkit compress --demo (compression is applied in evaluate/study)")
    compress.demo()
    return 0


def cmd_attention(args) -> int:
    from adkit.analysis.attention import extract_run
    from adkit.analysis.figures import save_figures
    from adkit.analysis.insights import analyze_run

    run = _saved_run(args, attention={"windows": args.samples if args.source == "windows" else None,
                                      "trajectories": args.samples if args.source == "rollout" else None,
                                      "seed": args.seed})
    extract_run(run, source=args.source)
    insights = analyze_run(run, source=args.source)
    print(insights.report)
    print(insights.ablation.verdict)
    figs = resolve(args.figs) if args.figs else run.figs
    paths = save_figures(insights.record, figs, insights.ablation, samples=run.cfg.attention.figure_samples,
                         coverage=insights.coverage)
    print(f"wrote {run.attention}, {run.insights.with_suffix('.md')}, {run.insights} "
          f"and {len(paths)} figures under {figs / 'attention'}")
    return 0


def cmd_demo(args) -> int:
    from adkit.demo import run_demo

    return run_demo(args.profile, args.run_dir, args.set)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of every process this command runs (sets ADKIT_THREADS); default: each "
                        "adkit process takes cores // (adkit processes running), see adkit.threads")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, fn) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--set", nargs="+", default=[], metavar="SECTION.FIELD=VALUE",
                       help="change config fields, e.g. compress.strategy=uniform compress.budget=20")
        s.set_defaults(fn=fn)
        return s

    s = command("doctor", "check packages, histories and checkpoint; say what to run next", cmd_doctor)
    s.add_argument("-c", "--config", default="quick", help="profile name or YAML (default: quick)")
    s.add_argument("--run-dir", default=None, help="run directory to check (default: runs/PROFILE)")

    s = command("collect", "write learning histories", cmd_collect)
    s.add_argument("-c", "--config", required=True, help="profile name (tiny, quick, paper, ...) or YAML path")
    s.add_argument("-o", "--out", default=None,
                   help="histories file (default: data/ENV-SOURCE-ID.h5, ID a hash of env + collect)")

    s = command("train", "train the AD transformer", cmd_train)
    s.add_argument("-c", "--config", required=True, help="profile name or YAML path")
    s.add_argument("--run-dir", required=True, help="where the checkpoint and logs go (resumes if present)")
    s.add_argument("--histories", default=None, help="histories file (default: the profile's)")
    s.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0: none)")
    s.add_argument("--scorer", default=None,
                   help="run directory of the full-context model that attention-scored compressors score with")
    s.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN/tensorboard (train.tensorboard)")

    s = command("evaluate", "in-context returns on held-out tasks", cmd_evaluate)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--episodes", type=int, default=None, help="episodes per stream (default: eval.episodes)")
    s.add_argument("--seeds", type=int, default=None, help="evaluation seeds per task (default: eval.seeds)")
    s.add_argument("--tasks", choices=["test", "train", "all"], default=None, help="default: eval.batch_tasks")
    s.add_argument("--greedy", action="store_true", help="argmax actions instead of sampling")
    s.add_argument("--compressor", default=None, help="compress the context with this strategy")
    s.add_argument("--budget", type=int, default=None, help="transitions kept by the compressor")
    s.add_argument("--kv", choices=["reencode", "evict"], default="reencode",
                   help="with --compressor: re-encode the kept transitions at every decision, or keep an evicting "
                        "key/value cache of --budget transitions (O(budget) per decision)")
    s.add_argument("--out", default=None, help="CSV path (default: RUN/eval/returns.csv)")

    s = command("study", "compression study (resumable): RUN/study/", cmd_study)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--mode", choices=["both", "training-free"], default="both",
                   help="both: retrain with each compressor and compare with training-free (results.csv); "
                        "training-free: only the unchanged model, every strategy (training_free.csv)")
    s.add_argument("--compressors", nargs="+", default=None,
                   help="registry names (default: study.retrain_compressors; training-free: study.compressors)")
    s.add_argument("--kv", nargs="+", choices=["reencode", "evict"], default=None,
                   help="how compressed contexts are kept (default: study.kv, both)")
    s.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="transitions kept (default: study.retrain_budgets / study.budgets, fractions of n_transit)")
    s.add_argument("--seeds", type=int, default=None, help="training and evaluation seeds (default: study.seeds)")
    s.add_argument("--episodes", type=int, default=None, help="episodes per rollout (default: study.episodes)")
    s.add_argument("--steps", type=int, default=None, help="training steps per retrained model (default: study.steps)")
    s.add_argument("--init", choices=["scratch", "run"], default=None,
                   help="retrained models start from scratch, or fine-tune the run's model (default: study.init)")
    s.add_argument("--workers", type=int, default=None, help="retrained cells at once (default: study.workers)")
    s.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="where retrained cells run (default: study.executor): this machine, or Ray")
    s.add_argument("--address", default=None,
                   help="Ray cluster address (default: study.address; none: a local Ray instance)")

    s = command("compress", "compressor demo on dummy data", cmd_compress)
    s.add_argument("--demo", action="store_true")

    s = command("attention", "extract attention, print the insight report, save figures", cmd_attention)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--source", choices=["windows", "rollout"], default="windows",
                   help="contexts: windows of the train histories, or rollouts on held-out tasks")
    s.add_argument("--samples", type=int, default=None,
                   help="windows (default attention.windows), or rollout trajectories (attention.trajectories)")
    s.add_argument("--seed", type=int, default=None, help="default: attention.seed")
    s.add_argument("--figs", default=None, help="figure root (default: RUN/figs); figures go to FIGS/attention/")

    s = command("demo", "run the five notebooks headless and write figs/REPORT.md", cmd_demo)
    s.add_argument("--profile", default="demo")
    s.add_argument("--run-dir", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; known failures print one clear line and exit 2, not a traceback."""
    args = build_parser().parse_args(argv)
    if args.threads:
        os.environ["ADKIT_THREADS"] = str(args.threads)  # this process and every one it starts
    if args.command not in ("demo", "doctor", "compress"):  # those compute nothing themselves
        from adkit import threads

        threads.configure()
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        print(f"adkit {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
