"""Offline fit on compressed windows: does a model retrained on them imitate the source differently?

On the run's validation windows (train tasks, held-out streams of the source's own histories), each
window cut to the last ``n_transit`` transitions (one decision's context) and compressed by
``--strategy`` at each budget, this prints for the decision's action: the mean entropy of the model's
action distribution, its accuracy against the source's action, and the probability it gives that
action; for the run's full-context model (on the full window, then on each compressed one) and for
the study's re-encoded cell retrained from scratch on that strategy and budget (``RUN/study/retrained/``,
made by ``adkit study`` or ``bench_seeds_study.py --retrain``), on the same windows.

    OMP_NUM_THREADS=1 python benchmarks/bench_window_fit.py --runs results/key-to-door/seed0 \\
        --strategy recency --budgets 100 50 25 12
"""

from __future__ import annotations

import argparse

import torch

from adkit.compress import make
from adkit.compress.context import compress_window
from adkit.data.collect import load_for
from adkit.data.tokens import Tokens
from adkit.model.checkpoint import load
from adkit.model.train import samplers
from adkit.paths import resolve
from adkit.run import Run, require


@torch.no_grad()
def fit(model, ctx: Tokens) -> dict[str, float]:
    """Entropy (nats), accuracy and p(source action) of ``model``'s decision on contexts ``ctx`` (B, L, ·)."""
    logp = model(**ctx)[:, -1].log_softmax(-1)  # (B, A)
    target = ctx.targets[:, -1:]  # (B, 1) the source's action
    return {"entropy": -(logp.exp() * logp).sum(-1).mean().item(),
            "accuracy": (logp.argmax(-1, keepdim=True) == target).float().mean().item(),
            "p_source": logp.gather(1, target).exp().mean().item()}


def line(run_dir: str, model: str, context: str, f: dict) -> None:
    print(f"| {run_dir} | {model} | {context} | {f['entropy']:.3f} | {f['accuracy']:.3f} | {f['p_source']:.3f} |",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--strategy", default="recency")
    p.add_argument("--budgets", type=int, nargs="+", default=[100, 50, 25, 12])
    p.add_argument("--windows", type=int, default=512)
    args = p.parse_args()
    print("| run | model | context | entropy (nats) | accuracy | p(source action) |")
    print("|---|---|---|---|---|---|")
    for run_dir in args.runs:
        run = Run.open(resolve(run_dir))
        full = load(run.require(run.weights, "train")).eval()
        _, val = samplers(run.cfg, load_for(run.cfg, run.require(run.histories, "collect")))
        tokens = Tokens.from_transitions(val.sample(args.windows))
        window = tokens.tokens(slice(tokens.length - run.cfg.model.n_transit, None))  # (B, n_transit, ·)
        line(run_dir, "full context", f"all {window.length}", fit(full, window))
        for k in args.budgets:
            ctx = compress_window(make(args.strategy, k), window, full.positions)
            line(run_dir, "full context", f"{args.strategy} {k}", fit(full, ctx))
            weights = require(run.cell(args.strategy, k, run.cfg.train.seed) / "model.safetensors",
                              f"bench_seeds_study.py --runs {run_dir} --kv reencode --retrain {args.strategy}")
            line(run_dir, "retrained", f"{args.strategy} {k}", fit(load(weights).eval(), ctx))


if __name__ == "__main__":
    main()
