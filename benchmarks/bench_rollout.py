"""Rollout decision cost: the rolling key/value cache against the same function recomputed, and DICP's way.

    python benchmarks/bench_rollout.py [--contexts 80 320 1280] [--envs 24] [--steps 30] [--history 2]

For each context length C, a model of the paper sizes with ``n_transit = C`` (4 layers) is fed a
history of ``--history`` x C random transitions per stream, then takes the same ``--steps``
decisions for ``--envs`` streams at once (8 held-out tasks x 3 seeds by default) three ways:

* ``cache``: the rolling key/value cache appends one token per decision (what rollouts use);
* ``same function``: the whole history so far re-encoded under the same sliding-window mask at
  every decision. This is the function the cache computes (equal logits: tests/test_model.py),
  so it is the like-for-like baseline; its cost grows with the history;
* ``DICP re-encode``: the last C transitions re-encoded from scratch at every decision (DICP's
  evaluation). With 2 or more layers this is a different function: a cached decision sees
  ``n_layer x (C - 1) + 1`` transitions back through the layers, a re-encoded one C.

Prints decisions per second and the cache's speed-up over each.
"""

from __future__ import annotations

import argparse
import time

import torch

from adkit.model import ADTransformer, ModelConfig

FIELDS = ("states", "actions", "rewards", "next_states", "queries")


def random_history(n: int, steps: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"states": torch.randint(0, 9, (n, steps, 2), generator=gen),
            "actions": torch.randint(0, 5, (n, steps), generator=gen),
            "rewards": torch.randint(0, 2, (n, steps), generator=gen).float(),
            "next_states": torch.randint(0, 9, (n, steps, 2), generator=gen),
            "queries": torch.randint(0, 9, (n, steps, 2), generator=gen)}


def timed(fn, decisions) -> float:
    t0 = time.perf_counter()
    for t in decisions:
        fn(t)
    return time.perf_counter() - t0


@torch.no_grad()
def measure(context: int, n_envs: int, steps: int, history: int) -> dict:
    torch.manual_seed(0)
    model = ADTransformer(ModelConfig(n_transit=context)).eval()
    start = history * context
    h = random_history(n_envs, start + steps, torch.Generator().manual_seed(1))
    decisions = range(start, start + steps)
    cache = model.new_cache(n_envs)
    for t in range(start):  # fill the cache with the history (not timed)
        model.step(cache, *(h[k][:, t] for k in FIELDS))

    def window(lo: int, t: int) -> dict:  # transitions lo..t with their stream positions
        return {**{k: v[:, lo:t + 1] for k, v in h.items()}, "positions": torch.arange(lo, t + 1).expand(n_envs, -1)}

    t_cache = timed(lambda t: model.step(cache, *(h[k][:, t] for k in FIELDS)), decisions)
    t_same = timed(lambda t: model(**window(0, t))[:, -1], decisions)
    t_dicp = timed(lambda t: model(**window(t + 1 - context, t))[:, -1], decisions)
    n = n_envs * steps
    return {"context": context, "history": start, "cache": n / t_cache, "same": n / t_same, "dicp": n / t_dicp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[80, 320, 1280])
    p.add_argument("--envs", type=int, default=24)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--history", type=int, default=2, help="history before the timed decisions, in contexts")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"decisions per second, {args.envs} streams batched, torch threads {torch.get_num_threads()}")
    print(f"{'context':>8} {'history':>8} {'cache':>8} {'same function':>14} {'DICP re-encode':>15} "
          f"{'x same':>7} {'x DICP':>7}")
    for c in args.contexts:
        r = measure(c, args.envs, args.steps, args.history)
        print(f"{r['context']:>8} {r['history']:>8} {r['cache']:>8.0f} {r['same']:>14.0f} {r['dicp']:>15.0f} "
              f"{r['cache'] / r['same']:>6.1f}x {r['cache'] / r['dicp']:>6.1f}x")


if __name__ == "__main__":
    main()
