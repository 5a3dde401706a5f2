"""Rollout step cost: rolling key/value cache vs full-window recompute (DICP's way).

    python benchmarks/bench_rollout.py [--contexts 80 320 1280] [--envs 24] [--steps 30]

For each context length C, a model of the paper sizes with ``n_transit = C`` is fed a
history of C random transitions per stream, then both backends take the same
``--steps`` decisions for ``--envs`` streams at once (8 held-out tasks x 3 seeds by
default): the cache appends one token per step, the recompute re-encodes the last
C transitions. Prints decisions per second and the ratio. (That both give the same
logits where their contexts coincide is a test: tests/test_model.py.)
"""

from __future__ import annotations

import argparse
import time

import torch

from adkit.model import ADTransformer, ModelConfig


def random_history(n: int, steps: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"states": torch.randint(0, 9, (n, steps, 2), generator=gen),
            "actions": torch.randint(0, 5, (n, steps), generator=gen),
            "rewards": torch.randint(0, 2, (n, steps), generator=gen).float(),
            "next_states": torch.randint(0, 9, (n, steps, 2), generator=gen),
            "queries": torch.randint(0, 9, (n, steps, 2), generator=gen)}


@torch.no_grad()
def measure(context: int, n_envs: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = ADTransformer(ModelConfig(n_transit=context)).eval()
    h = random_history(n_envs, context + steps, torch.Generator().manual_seed(1))
    cache = model.new_cache(n_envs)
    fields = ("states", "actions", "rewards", "next_states", "queries")
    for t in range(context):  # fill the cache with the history (not timed)
        model.step(cache, *(h[k][:, t] for k in fields))
    t0 = time.perf_counter()
    for t in range(context, context + steps):
        model.step(cache, *(h[k][:, t] for k in fields))
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in range(context, context + steps):  # re-encode the last C transitions (positions as in the stream)
        lo = t + 1 - context
        window = {k: v[:, lo:t + 1] for k, v in h.items()}
        model(**window, positions=torch.arange(lo, t + 1).expand(n_envs, context))[:, -1]
    t_full = time.perf_counter() - t0
    return {"context": context, "cache_steps_per_s": n_envs * steps / t_cache,
            "recompute_steps_per_s": n_envs * steps / t_full, "speedup": t_full / t_cache}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[80, 320, 1280])
    p.add_argument("--envs", type=int, default=24)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'context':>8} {'cache steps/s':>14} {'recompute steps/s':>18} {'speed-up':>9}")
    for c in args.contexts:
        r = measure(c, args.envs, args.steps)
        print(f"{r['context']:>8} {r['cache_steps_per_s']:>14.0f} {r['recompute_steps_per_s']:>18.0f} "
              f"{r['speedup']:>8.1f}x")


if __name__ == "__main__":
    main()
