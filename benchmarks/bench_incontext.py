"""In-context learning quality and cost of a profile, over several training seeds.

    python benchmarks/bench_incontext.py --profile quick [--seeds 0 1 2] [--out benchmarks/results]
    python benchmarks/bench_incontext.py --profile quick --compare-loss --budget 240
    python benchmarks/bench_incontext.py --profile paper --set train.episode_stride=4 --name paper-k4 \
        --histories data/paper-darkroom-ppo.h5

Default mode: collect once (timed; saved to the profile's histories file, as ``adkit collect`` does,
so the runs serve every later stage), then for each training seed train (timed) and
evaluate on the held-out tasks (timed); prints per-seed and mean +- std of the
first-episode and last-10-episode returns (absolute and share of optimal), the
episode at which AD reaches 80% of optimal, and the source's own per-stream curve
on the same tasks; saves one figure with AD (band over seeds), source, random and
optimal.

``--set SECTION.FIELD=VALUE`` changes the profile (results go to ``--name``);
``--histories FILE`` reuses collected histories instead of collecting (no collect time).
A relative ``--out`` resolves against the project home, as ``adkit``'s run directories
do (``$ADKIT_HOME`` sets it).

``--compare-loss``: trains the per-position loss and DICP's last-position loss for
the same wall-clock budget (seconds) and evaluates both the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from adkit import envs
from adkit.config import load_config, parse_overrides
from adkit.data.collect import collect_to_file
from adkit.data.histories import load as load_histories
from adkit.model.evaluate import summary
from adkit.model.seeds import train_and_evaluate
from adkit.paths import resolve
from adkit.plots import band, source_bands
from adkit.run import Run, task_split


def run_seed(cfg, h, run_dir: Path, time_budget: float = 0.0) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: never resume an earlier benchmark's model
    t0 = time.perf_counter()
    res = train_and_evaluate(Run.create(cfg, run_dir), h, progress=False, time_budget_s=time_budget)
    return {"train_s": time.perf_counter() - t0 - res.seconds, "eval_s": res.seconds,
            "curve": res.returns.mean((0, 1)).tolist(), **summary(res)}


def fmt(values) -> str:
    """Mean +- sample std (ddof=1) over seeds; one seed has no spread."""
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.2f} +- {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f} (1 seed)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--compare-loss", action="store_true")
    p.add_argument("--budget", type=float, default=240.0, help="seconds of training per loss mode")
    p.add_argument("--set", nargs="+", default=[], metavar="SECTION.FIELD=VALUE", help="change config fields")
    p.add_argument("--name", help="results folder under --out (default: the profile name)")
    p.add_argument("--histories", help="reuse this histories file instead of collecting")
    args = p.parse_args()
    out = resolve(args.out) / (args.name or args.profile)
    out.mkdir(parents=True, exist_ok=True)
    changes = parse_overrides(args.set)
    cfg = load_config(args.profile, changes)
    if args.histories:
        h, t_collect = load_histories(args.histories), 0.0
    else:  # saved where the runs' later stages (a study retraining from scratch) look for them
        path, t_collect = collect_to_file(cfg, progress=False)
        h = load_histories(path)
    _, test = task_split(cfg)
    src = h.task_returns(test)  # (streams, episodes)
    print(f"profile {cfg.profile}: collect {t_collect:.1f} s ({cfg.collect.source}); source on held-out tasks: "
          f"episode 1 {src[:, 0].mean():.2f}, last 10 {src[:, -10:].mean():.2f}")
    if args.compare_loss:
        results = {}
        for mode in ("all", "last"):
            c = load_config(args.profile, changes)
            c.train.loss, c.train.steps = mode, 10**6
            results[mode] = r = run_seed(c, h, out / f"loss-{mode}", time_budget=args.budget)
            print(f"loss={mode:4s} budget {args.budget:.0f} s: last-10 return {r['last_mean']:.2f} "
                  f"({100 * r['last_share']:.0f}% of optimal), first {r['first_episode']:.2f}")
        (out / "compare_loss.json").write_text(json.dumps(results, indent=1))
        return
    runs = []
    for seed in args.seeds:
        c = load_config(args.profile, changes)
        c.train.seed = seed
        r = run_seed(c, h, out / f"seed{seed}")
        runs.append(r)
        print(f"seed {seed}: train {r['train_s']:.0f} s, eval {r['eval_s']:.1f} s; first episode "
              f"{r['first_episode']:.2f} ({100 * r['first_share']:.0f}%), last 10 {r['last_mean']:.2f} "
              f"({100 * r['last_share']:.0f}%), 80% reached at episode {r['episodes_to_80pct']}; first reward at "
              f"episode {r['first_reward_median']:.1f} (median), never {100 * r['never_rewarded']:.0f}%")
    opt = runs[0]["optimal_mean"]
    print(f"mean over {len(runs)} seeds: first episode {fmt([r['first_episode'] for r in runs])}, "
          f"last 10 episodes {fmt([r['last_mean'] for r in runs])} of optimal {opt:.2f} "
          f"({fmt([100 * r['last_share'] for r in runs])} %); collect+train+eval per seed "
          f"{t_collect + np.mean([r['train_s'] + r['eval_s'] for r in runs]):.0f} s")
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = np.array([r["curve"] for r in runs])  # (seeds, episodes)
    x = np.arange(1, curves.shape[1] + 1)
    band(ax, x, curves, f"AD ({len(runs)} training seeds)")
    source_bands(ax, src, f"source: {cfg.collect.source}", cfg.train.episode_stride)
    ax.axhline(envs.random_return_mean(cfg.env.name, test), color="tab:red", ls=":", label="random")
    ax.axhline(opt, color="k", ls="--", label=f"optimal ({opt:.2f})")
    ax.set(xlabel="episode", ylabel="return", title=f"{cfg.env.name} held-out tasks, profile {cfg.profile}")
    ax.legend(fontsize=8)
    fig.savefig(out / "incontext.png", dpi=120, bbox_inches="tight")
    (out / "incontext.json").write_text(json.dumps({"collect_s": t_collect, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
