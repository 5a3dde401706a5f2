"""The ``adkit`` command line: one subcommand per pipeline stage.

    adkit doctor                          what is installed, what exists, what to run next
    adkit collect -c CONFIG [-o FILE]     learning histories of the source algorithm
    adkit train -c CONFIG --run-dir DIR   checkpoint, resolved config, training log
    adkit evaluate --run-dir DIR          in-context returns on the held-out tasks (CSV + figure)
    adkit study --run-dir DIR             compression study, retrained and training-free (RUN/study)
    adkit compress --demo                 what each compressor keeps, on dummy data
    adkit attention --run-dir DIR         attention file, insight report, figures (RUN/attention, RUN/figs)
    adkit demo [--profile quick]          the five notebooks headless, then figs/REPORT.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def overrides(pairs: list[str] | None) -> dict:
    """``["train.budget=20", "train.compressor=recency"]`` -> nested config overrides
    (values read as YAML scalars: numbers, booleans, strings)."""
    import yaml

    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes SECTION.FIELD=VALUE, got {pair!r}")
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return out


def _config(args):
    from adkit.config import load_config

    return load_config(args.config, overrides(getattr(args, "set", None)))


def cmd_collect(args) -> int:
    from adkit.collect import collect_to_file

    cfg = _config(args)
    path, seconds = collect_to_file(cfg, args.out)
    print(f"wrote {path} ({cfg.collect.source}, {seconds:.1f} s)")
    return 0


def histories_for(cfg, path: str | None):
    """Load the histories named on the command line, or the profile's default file."""
    from adkit.collect import default_path
    from adkit.histories import load
    from adkit.pipeline import require

    path = Path(path) if path else default_path(cfg)
    return load(require(path, f"`adkit collect -c {cfg.profile} -o {path}` (notebook 01_train)"))


def cmd_train(args) -> int:
    from adkit.train import train

    cfg = _config(args)
    h = histories_for(cfg, args.histories)
    scorer = None
    if args.scorer:
        from adkit.model import load

        scorer = load(args.scorer)
    run = train(cfg, h, args.run_dir, time_budget_s=args.time_budget, scorer=scorer)
    print(f"trained {run} (log: {run / 'train_log.csv'})")
    return 0




def cmd_evaluate(args) -> int:
    from adkit import envs
    from adkit.evaluate import rollout, summary
    from adkit.model import load
    from adkit.pipeline import run_config
    from adkit.plots import plot_curves, save_png

    cfg = run_config(args.run_dir)
    model = load(args.run_dir)
    train_tasks, test_tasks = envs.task_split(cfg.env.name, cfg.env.split_seed, cfg.env.train_ratio)
    tasks = {"test": test_tasks, "train": train_tasks, "all": train_tasks + test_tasks}[args.tasks]
    compressor = None
    if args.compressor:
        from adkit.context import build

        if args.budget is None:
            raise ValueError("--compressor needs --budget (transitions kept)")
        compressor = build(args.compressor, args.budget, model, cfg.env.name)
    res = rollout(model, cfg.env.name, tasks, seeds=range(args.seeds or cfg.eval.seeds),
                  episodes=args.episodes or cfg.eval.episodes, greedy=args.greedy, compressor=compressor)
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval" / "returns.csv"
    res.write_csv(out)
    fig = plot_curves(res, title=f"{cfg.env.name}: in-context return on {len(tasks)} tasks")
    save_png(fig, out.with_suffix(".png"))
    s = summary(res)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    print(f"first episode {s['first_episode']:.2f}, last 10 episodes {s['last_mean']:.2f} "
          f"of optimal {s['optimal_mean']:.2f} ({100 * s['last_share']:.0f}%), "
          f"80% of optimal reached at episode {s['episodes_to_80pct']}; first reward at episode "
          f"{s['first_reward_median']:.1f} (median over tasks x seeds), never for {100 * s['never_rewarded']:.0f}%")
    return 0


def cmd_study(args) -> int:
    if args.mode == "training-free":
        from adkit.study import markdown_summary, training_free_study, write_outputs

        df = training_free_study(args.run_dir, compressors=args.compressors, budgets=args.budgets or [40, 20, 10, 5],
                                 seeds=range(args.seeds), episodes=args.episodes)
        md, png = write_outputs(df, Path(args.run_dir) / "study")
        print(markdown_summary(df))
        print(f"wrote {md} and {png}")
        return 0
    from adkit.retrain import compression_study, headline, markdown_summary

    df = compression_study(args.run_dir, compressors=args.compressors, budgets=args.budgets or [40, 20, 10],
                           seeds=range(args.seeds), steps=args.steps, episodes=args.episodes, workers=args.workers)
    print(markdown_summary(df))
    print("\n".join(headline(df, args.run_dir)))
    print(f"wrote {Path(args.run_dir) / 'study' / 'results.csv'}, results.md and figures")
    return 0


def cmd_doctor(args) -> int:
    from adkit.doctor import doctor

    return doctor(args.config, args.run_dir)


def cmd_compress(args) -> int:
    from adkit import compress

    if not args.demo:
        raise SystemExit("usage: adkit compress --demo (compression is applied in evaluate/study)")
    compress.demo()
    return 0


def cmd_attention(args) -> int:
    from adkit.attention import attention_path, extract_run
    from adkit.attention_plots import save_figures
    from adkit.insights import analyze_run

    extract_run(args.run_dir, source=args.source, samples=args.samples, seed=args.seed)
    insights = analyze_run(args.run_dir, source=args.source, seed=args.seed)
    print(insights.report)
    print(insights.ablation.verdict)
    figs = Path(args.figs) if args.figs else Path(args.run_dir) / "figs"
    paths = save_figures(insights.record, figs, insights.ablation)
    out = attention_path(args.run_dir)
    print(f"wrote {out}, {out.parent / 'insights.md'}, {out.parent / 'insights.json'} "
          f"and {len(paths)} figures under {figs / 'attention'}")
    return 0


def cmd_demo(args) -> int:
    from adkit.demo import run_demo

    return run_demo(args.profile, args.run_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("doctor", help="check packages, histories and checkpoint; say what to run next")
    s.add_argument("-c", "--config", default="quick", help="profile name or YAML (default: quick)")
    s.add_argument("--run-dir", default=None, help="run directory to check (default: runs/PROFILE)")
    s.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("collect", help="write learning histories")
    s.add_argument("-c", "--config", required=True, help="profile name (tiny, quick, paper) or YAML path")
    s.add_argument("-o", "--out", default=None, help="histories file (default: data/PROFILE-ENV-SOURCE.h5)")
    s.add_argument("--set", nargs="+", metavar="SECTION.FIELD=VALUE", help="change config fields")
    s.set_defaults(fn=cmd_collect)

    s = sub.add_parser("train", help="train the AD transformer")
    s.add_argument("-c", "--config", required=True, help="profile name or YAML path")
    s.add_argument("--run-dir", required=True, help="where the checkpoint and logs go (resumes if present)")
    s.add_argument("--histories", default=None, help="histories file (default: the profile's)")
    s.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0: none)")
    s.add_argument("--set", nargs="+", metavar="SECTION.FIELD=VALUE",
                   help="change config fields, e.g. train.compressor=uniform train.budget=20")
    s.add_argument("--scorer", default=None,
                   help="run directory of the full-context model that attention-scored compressors score with")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("evaluate", help="in-context returns on held-out tasks")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--episodes", type=int, default=None, help="episodes per stream (default: config, 50)")
    s.add_argument("--seeds", type=int, default=None, help="evaluation seeds per task (default: config)")
    s.add_argument("--tasks", choices=["test", "train", "all"], default="test")
    s.add_argument("--greedy", action="store_true", help="argmax actions instead of sampling")
    s.add_argument("--compressor", default=None, help="compress the context with this strategy")
    s.add_argument("--budget", type=int, default=None, help="transitions kept by the compressor")
    s.add_argument("--out", default=None, help="CSV path (default: RUN/eval/returns.csv)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("study", help="compression study (resumable): RUN/study/")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--mode", choices=["both", "training-free"], default="both",
                   help="both: retrain with each compressor and compare with training-free (results.csv); "
                        "training-free: only the unchanged model, every strategy (training_free.csv)")
    s.add_argument("--compressors", nargs="+", default=None,
                   help="registry names (default: the original six + random + sink-recent; training-free: all)")
    s.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="transitions kept (default: 40 20 10; training-free: 40 20 10 5)")
    s.add_argument("--seeds", type=int, default=3, help="seeds: training seeds and evaluation seeds")
    s.add_argument("--episodes", type=int, default=None, help="episodes per rollout (default: config)")
    s.add_argument("--steps", type=int, default=None, help="training steps per retrained model (default: the run's)")
    s.add_argument("--workers", type=int, default=1, help="retrained cells run in parallel processes")
    s.set_defaults(fn=cmd_study)

    s = sub.add_parser("compress", help="compressor demo on dummy data")
    s.add_argument("--demo", action="store_true")
    s.set_defaults(fn=cmd_compress)

    s = sub.add_parser("attention", help="extract attention, print the insight report, save figures")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--source", choices=["windows", "rollout"], default="windows",
                   help="contexts: windows of the train histories, or rollouts on held-out tasks")
    s.add_argument("--samples", type=int, default=None,
                   help="windows (default 256), or rollout trajectories (default all)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--figs", default=None, help="figure root (default: RUN/figs); figures go to FIGS/attention/")
    s.set_defaults(fn=cmd_attention)

    s = sub.add_parser("demo", help="run the five notebooks headless and write figs/REPORT.md")
    s.add_argument("--profile", default="quick")
    s.add_argument("--run-dir", default=None)
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; known failures print one clear line and exit 2, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"adkit {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
