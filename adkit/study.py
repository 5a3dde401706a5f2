"""Training-free compression study: what compressing the context costs a full-context model, measured.

The model of a run (notebook 01) is evaluated, unchanged, with its context
compressed at every decision. One *cell* is one compressor x budget x evaluation
seed on the held-out tasks (one stream per task, seeded by the seed):

* ``return``: mean episode return of in-context rollouts whose every decision sees
  the compressed context (:func:`adkit.evaluate.rollout` with
  ``compressor=adkit.context.build(name, budget, ...)``), over tasks and episodes;
  ``full_return`` is the full-context rollout's on the same tasks, seed and episodes
  (so both draw the same random numbers until their decisions differ).
* ``agreement`` / ``kl``: on contexts recorded from the full-context model's own
  rollout of that seed (``decisions`` steps spread over the stream, windows of
  ``n_transit``), the compressed-context policy against the full-context policy at
  the same decision: share of equal argmax actions and mean KL(full || compressed).
  One batch through the same path a compressed rollout takes (:func:`adkit.context.compressed_logits`).
* cost: ``rollout_step_ms``, the compressed rollout's wall-clock per environment step
  (all its streams batched; includes the first ``n_transit`` steps of shorter contexts
  and the environment); ``decision_ms`` and ``peak_mem_mb``, one steady-state decision
  for all its streams from full ``n_transit`` contexts (:func:`decision_cost`). Peak memory
  is measured, not estimated: ``torch.profiler`` with ``profile_memory=True``
  records every tensor allocation and free, which are replayed in order to find the
  highest net allocation during the decision (:func:`peak_allocated_mb`); state kept
  between decisions (the key/value cache) is added, weights and the stored history
  (common to all) are not.

Baselines in every table: ``none`` (full context, rolling key/value cache: the
reference policy), ``full`` (the same full context re-encoded at every decision,
DICP's way: the cost of re-encoding), ``random`` (a random subset at the same
budget) and ``oracle`` (greedy leave-one-out, an upper bound). The oracle costs
O(n^2) model calls per decision, so it runs on a reduced protocol (:data:`REDUCED`:
fewer tasks, episodes, contexts and seeds); the ``tasks``, ``episodes`` and
``contexts`` columns and the ``note`` say so in every row, its ``full_return`` is the
full-context return on that same reduced protocol, and the summary counts its seeds.

The table ``RUN/study/training_free.csv`` gets one row per cell, rewritten
atomically after each cell: an interrupted study loses no finished cell, and a
rerun computes only the missing ones.

>>> df = training_free_study("runs/quick", budgets=(40, 20, 10, 5), seeds=(0, 1, 2))
>>> write_outputs(df, "runs/quick/study")  # training_free.md, return_vs_budget.png
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from adkit import compress, envs
from adkit.context import build, compressed_logits
from adkit.cost import peak_allocated_mb, time_ms
from adkit.evaluate import RolloutResult, rollout
from adkit.insights import kl, markdown_table
from adkit.io import atomic_path, write_text
from adkit.metrics import head_profile

MODE = "training-free"
BASELINES = ("none", "full")  # full context: rolling cache / re-encoded every step (budget = n_transit)
KEY = ["compressor", "budget", "seed"]
COLUMNS = KEY + ["mode", "backend", "tasks", "episodes", "return", "full_return", "optimal", "agreement", "kl",
                 "contexts", "context_tokens", "rollout_step_ms", "decision_ms", "peak_mem_mb", "note"]
TABLE, SUMMARY, FIGURE = "training_free.csv", "training_free.md", "return_vs_budget.png"


@dataclass(frozen=True)
class Protocol:
    """How much of the held-out evaluation a cell runs; ``None`` keeps the study's value."""

    tasks: int | None = None  # the first held-out tasks
    episodes: int | None = None  # episodes per rollout
    contexts: int | None = None  # recorded contexts for agreement / KL (evenly spread over all)
    seeds: int | None = None  # the first evaluation seeds (the table has no row for the others)

    def within(self, full: Protocol) -> Protocol:
        """This protocol's task, episode and context counts, each capped by (and defaulting to) ``full``'s."""
        return Protocol(*(min(v or f, f) for v, f in zip((self.tasks, self.episodes, self.contexts),
                                                         (full.tasks, full.episodes, full.contexts))))


REDUCED = {"oracle": Protocol(tasks=1, episodes=5, contexts=8, seeds=1)}  # O(n^2) model calls per decision


def study_compressors() -> list[str]:
    """Every registry strategy once, the no-compression aliases (``none``/``full``) left out."""
    return [name for name, cls in compress.COMPRESSORS.items() if cls is not compress.NoCompressor]


def describe(names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per strategy: registry name, class, what it keeps (its docstring's first
    sentence) and whether it scores with attention."""
    rows = []
    for name in names or study_compressors():
        cls = compress.COMPRESSORS[name]
        doc = " ".join((cls.__doc__ or "").split())
        needs = "by rule" if cls is compress.ProfileCompressor else cls.needs_attention  # set per instance
        rows.append({"strategy": name, "class": cls.__name__, "keeps": doc.split(". ")[0].rstrip("."),
                     "needs attention": needs})
    return pd.DataFrame(rows)


# ---- the decision, compressed -----------------------------------------------------------------------


def decision_steps(n_transit: int, steps: int, count: int) -> list[int]:
    """``count`` decision steps spread evenly over ``n_transit .. steps - 1`` (each sees a full window)."""
    if steps <= n_transit:
        raise ValueError(f"a rollout of {steps} steps never fills the {n_transit}-transition context; "
                         f"evaluate more episodes")
    return sorted({int(t) for t in np.linspace(n_transit, steps - 1, count).round()})


def spread(n: int, m: int | None) -> Tensor:
    """``min(m, n)`` indices spread evenly over ``0..n-1`` (all when ``m`` is None)."""
    return torch.arange(n) if m is None or m >= n else torch.linspace(0, n - 1, m).round().long().unique()


def profile_kwargs(model, contexts: dict[str, Tensor]) -> dict:
    """``rule`` and ``size`` of :class:`~adkit.compress.ProfileCompressor`, profiled (FastGen-style,
    :func:`adkit.metrics.head_profile`) on every layer and head of ``model`` over ``contexts`` (B, L, ·)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(**contexts, names="hook_pattern")
    rewards = contexts["rewards"][:, :-1].numpy()  # (B, L - 1) of the context transitions
    records = [p for layer in cache.stack("pattern").numpy() for p in head_profile(layer, rewards)]
    chosen = compress.ProfileCompressor.from_profile(records, 1)
    return {"rule": chosen.rule, "size": chosen.size}


# ---- cost -------------------------------------------------------------------------------------------


@torch.no_grad()
def decision_cost(model, window: dict[str, Tensor], name: str, compressor: compress.Compressor | None = None,
                  generator: torch.Generator | None = None, scorer=None) -> tuple[float, float]:
    """``(ms, peak MB)`` of one decision for every row of ``window`` (B, n_transit, ·).

    ``name`` ``"none"``: a step of the rolling key/value cache, filled with the first
    ``n_transit - 1`` transitions beforehand (the cache's size is added to the peak);
    ``"full"``: the whole window re-encoded; otherwise ``compressor``'s decision
    (:func:`compressed_logits`: attention pass of ``scorer``, default ``model``, if needed,
    selection, re-encoding).
    """
    resident = 0.0
    if name == "none":
        cache = model.new_cache(window["actions"].shape[0])
        fields = [window[k] for k in ("states", "actions", "rewards", "next_states", "queries")]
        for i in range(window["actions"].shape[1] - 1):
            model.step(cache, *(f[:, i] for f in fields))
        resident = sum(t.numel() * t.element_size() for t in cache.k + cache.v) / 2**20
        fn = lambda: model.step(cache, *(f[:, -1] for f in fields))  # noqa: E731
    elif name == "full":
        fn = lambda: model(**window)[:, -1]  # noqa: E731
    else:
        fn = lambda: compressed_logits(model, window, compressor, generator, scorer)  # noqa: E731
    return time_ms(fn), resident + peak_allocated_mb(fn)


# ---- one seed's reference and one cell --------------------------------------------------------------


@dataclass
class Reference:
    """What every cell of one seed is compared with: the full-context rollout and contexts recorded from it.

    ``contexts``: windows of ``n_transit`` before the recorded decisions, task-major
    ``(n_tasks * n_decisions, n_transit, ·)``; ``logits``: the full-context policy's there
    ``(N, A)``; ``probe``: the contexts of the last recorded decision, one per task
    (cost probe); ``extra``: constructor arguments calibrated on the contexts.
    """

    result: RolloutResult
    contexts: dict[str, Tensor]
    logits: Tensor
    probe: dict[str, Tensor]
    extra: dict[str, dict]

    def protocol(self) -> Protocol:
        """The full protocol: every task, episode and recorded context of this reference."""
        return Protocol(len(self.result.tasks), self.result.returns.shape[-1], len(self.logits))


@torch.no_grad()
def reference(model, env_name: str, tasks, seed: int, episodes: int, decisions: int = 16) -> Reference:
    """Roll out the full-context model (rolling cache) on ``tasks`` with ``seed`` and record contexts."""
    res = rollout(model, env_name, tasks, seeds=[seed], episodes=episodes, progress=False)
    n = model.cfg.n_transit
    windows = [res.history.window(t, n) for t in decision_steps(n, res.steps, decisions)]
    contexts = {k: torch.stack([w[k] for w in windows], 1).flatten(0, 1)  # (S, D, n, ·) -> (S*D, n, ·)
                for k in windows[0]}
    logits = model(**contexts)[:, -1]  # (S*D, A)
    return Reference(res, contexts, logits, windows[-1], {"profile": profile_kwargs(model, contexts)})


@torch.no_grad()
def run_cell(model, env_name: str, tasks, ref: Reference, name: str, budget: int, seed: int,
             protocol: Protocol = Protocol()) -> dict:
    """One row of the table: ``name`` at ``budget`` on evaluation seed ``seed`` (see the module doc),
    on ``protocol`` within the reference's (all its tasks, episodes and contexts)."""
    full = ref.protocol()
    p = protocol.within(full)
    pick = spread(full.contexts, p.contexts)
    contexts = {k: v[pick] for k, v in ref.contexts.items()}
    gen = torch.Generator().manual_seed(seed)
    compressor = build("none" if name in BASELINES else name, budget, model, env_name, **ref.extra.get(name, {}))
    if p.tasks == full.tasks:
        base = ref.result.returns[..., :p.episodes]  # (tasks, 1, episodes)
    else:  # on the same tasks and seed the full-context rollout draws the same random numbers
        base = rollout(model, env_name, tasks[:p.tasks], seeds=[seed], episodes=p.episodes, progress=False).returns
    if name == "none":
        res = ref.result
    else:
        res = rollout(model, env_name, tasks[:p.tasks], seeds=[seed], episodes=p.episodes, progress=False,
                      **({"backend": "recompute"} if name == "full" else {"compressor": compressor}))
    logits, tokens = compressed_logits(model, contexts, compressor, gen)
    logq = logits.double().log_softmax(-1)
    logp = ref.logits[pick].double().log_softmax(-1)
    ms, mb = decision_cost(model, {k: v[:p.tasks] for k, v in ref.probe.items()}, name, compressor, gen)
    notes = {"none": "full context, rolling key/value cache (reference)",
             "full": "full context re-encoded every step (DICP)"}
    note = notes.get(name, "full protocol" if p == full else "reduced protocol (costly compressor)")
    if name == "profile":
        note += f"; rule {ref.extra[name]['rule']}, size {ref.extra[name]['size']}"
    return {
        "compressor": name, "budget": budget, "seed": seed, "mode": MODE,
        "backend": "cache" if name == "none" else "recompute", "tasks": p.tasks, "episodes": p.episodes,
        "return": float(res.returns.mean()),
        "full_return": float(base.mean()),
        "optimal": float(res.optimal[:p.tasks].mean()),
        "agreement": float((logq.argmax(-1) == logp.argmax(-1)).double().mean()),
        "kl": float(kl(logp, logq).clamp_min(0).mean()),  # clamp: float rounding of a zero KL
        "contexts": len(pick), "context_tokens": tokens,
        "rollout_step_ms": 1000 * res.seconds / res.steps, "decision_ms": ms, "peak_mem_mb": mb, "note": note,
    }


# ---- the study --------------------------------------------------------------------------------------


def read_table(path: str | Path, columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    """The study table at ``path`` (empty, with ``columns``, when there is none yet)."""
    path = Path(path)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(columns))


def write_table(df: pd.DataFrame, path: str | Path, columns: Sequence[str] = COLUMNS) -> Path:
    """Write ``columns`` of the table atomically (a crash leaves the previous file whole)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df[list(columns)].to_csv(tmp, index=False)
    return path


def check_budgets(budgets: Sequence[int], n_transit: int) -> list[int]:
    bad = [b for b in budgets if not (isinstance(b, (int, np.integer)) and 1 <= b < n_transit)]
    if bad or not budgets:
        raise ValueError(f"budgets must be transitions kept in 1..{n_transit - 1} (n_transit {n_transit}), "
                         f"got {list(budgets)}")
    return [int(b) for b in budgets]


def _check_protocol(rows: list[dict], path: Path, reduced: dict[str, Protocol], full: Protocol) -> None:
    """Raise if a finished row was made with another (tasks, episodes, contexts) than this study would use."""
    for r in rows:
        want = reduced.get(r["compressor"], Protocol()).within(full)
        have = Protocol(int(r["tasks"]), int(r["episodes"]), int(r["contexts"]))
        if have != want:
            raise ValueError(f"{path} holds a {r['compressor']} row made with {have}, this study makes {want}; "
                             "remove the file or pass another out=")


def training_free_study(run_dir: str | Path, compressors: Sequence[str] | None = None,
                        budgets: Sequence[int] = (40, 20, 10, 5), seeds: Sequence[int] = (0, 1, 2),
                        episodes: int | None = None, decisions: int = 16,
                        reduced: dict[str, Protocol] | None = None, out: str | Path | None = None,
                        progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the training-free study of a run; returns the whole table.

    Args:
        run_dir: a run of notebook 01 / ``adkit train`` (``model.safetensors``, ``config.yaml``).
        compressors: registry names (default :func:`study_compressors`); the baselines
            ``none`` and ``full`` (budget ``n_transit``) are always added.
        budgets: transitions kept, each in ``1 .. n_transit - 1``.
        seeds: evaluation seeds; each is one stream per held-out task.
        episodes: episodes per rollout (default: the run's ``eval.episodes``).
        decisions: decision steps per stream at which contexts are recorded for agreement / KL.
        reduced: cheaper protocols per compressor (default :data:`REDUCED`).
        out: the table (default ``RUN/study/training_free.csv``); finished cells in it are
            kept, not recomputed; rows made with another protocol raise ``ValueError``.
    """
    from adkit.model import load
    from adkit.pipeline import run_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    model = load(run_dir)
    n = model.cfg.n_transit
    names = list(dict.fromkeys(compressors or study_compressors()))
    unknown = [c for c in names if c not in compress.COMPRESSORS]
    if unknown:
        raise ValueError(f"unknown compressors {unknown}; known: {', '.join(compress.COMPRESSORS)}")
    names = [c for c in names if c not in BASELINES]
    budgets = check_budgets(budgets, n)
    episodes = episodes or cfg.eval.episodes
    reduced = REDUCED if reduced is None else reduced
    _, tasks = envs.task_split(cfg.env.name, cfg.env.split_seed, cfg.env.train_ratio)
    path = Path(out) if out else run_dir / "study" / TABLE
    rows = read_table(path).to_dict("records")
    steps = decision_steps(n, episodes * envs.spec(cfg.env.name).horizon, decisions)
    _check_protocol(rows, path, reduced, Protocol(len(tasks), episodes, len(tasks) * len(steps)))
    cells = [(s, c, b) for i, s in enumerate(seeds) for c in [*BASELINES, *names]
             if i < (reduced.get(c, Protocol()).seeds or len(seeds))
             for b in ([n] if c in BASELINES else budgets)]
    done = {(int(r["seed"]), r["compressor"], int(r["budget"])) for r in rows}
    todo = [cell for cell in cells if cell not in done]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="training-free study", disable=not progress)
    for seed, group in itertools.groupby(todo, key=lambda cell: cell[0]):
        ref = reference(model, cfg.env.name, tasks, seed, episodes, decisions)
        for _, name, budget in group:
            bar.set_postfix_str(f"{name} @ {budget}, seed {seed}")
            rows.append(run_cell(model, cfg.env.name, tasks, ref, name, budget, seed, reduced.get(name, Protocol())))
            write_table(pd.DataFrame(rows, columns=COLUMNS), path)
            bar.update()
    bar.close()
    return read_table(path)


# ---- summaries ---------------------------------------------------------------------------------------


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per compressor x budget: means (and std over seeds) of return, share of the full-context
    return (on the same protocol), agreement, KL and cost; baselines first, then by budget
    (largest first) and share (best first)."""
    df = df.assign(share=df["return"] / df["full_return"].where(df["full_return"] > 0))
    g = df.groupby(["compressor", "budget"])
    out = g.agg(seeds=("seed", "nunique"), tasks=("tasks", "first"), episodes=("episodes", "first"),
                return_mean=("return", "mean"), return_std=("return", "std"), share_mean=("share", "mean"),
                share_std=("share", "std"), agreement=("agreement", "mean"), kl=("kl", "mean"),
                context_tokens=("context_tokens", "mean"), rollout_step_ms=("rollout_step_ms", "mean"),
                decision_ms=("decision_ms", "mean"), peak_mem_mb=("peak_mem_mb", "mean"), note=("note", "first"))
    out = out.reset_index().fillna({"return_std": 0.0, "share_std": 0.0})
    out["rank"] = [BASELINES.index(c) if c in BASELINES else len(BASELINES) for c in out["compressor"]]
    out = out.sort_values(["rank", "budget", "share_mean"], ascending=[True, False, False])
    return out.drop(columns="rank").reset_index(drop=True)


def markdown_summary(df: pd.DataFrame) -> str:
    """The summary as a markdown table: mean ± std over seeds, share of the full-context return."""
    s = summary_table(df)
    pm = lambda m, sd, fmt: f"{m:{fmt}} ± {sd:{fmt}}"  # noqa: E731
    view = pd.DataFrame({
        "compressor": s["compressor"], "budget": s["budget"], "seeds": s["seeds"],
        "return": [pm(m, sd, ".2f") for m, sd in zip(s["return_mean"], s["return_std"])],
        "share of full": [pm(100 * m, 100 * sd, ".0f") + " %" for m, sd in zip(s["share_mean"], s["share_std"])],
        "agreement": s["agreement"], "KL": s["kl"], "tokens": s["context_tokens"],
        "decision ms": s["decision_ms"], "step ms": s["rollout_step_ms"], "peak MB": s["peak_mem_mb"],
        "protocol": [f"{t} tasks x {e} ep; {note}" for t, e, note in zip(s["tasks"], s["episodes"], s["note"])],
    })
    return markdown_table(view)


def write_outputs(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the markdown summary and the return-vs-budget figure into ``out_dir``."""
    from adkit.plots import save_png
    from adkit.study_plots import plot_return_vs_budget

    out_dir = Path(out_dir)
    md = out_dir / SUMMARY
    write_text(md, f"# Training-free compression study\n\n{markdown_summary(df)}\n\n"
                   "Share: return / full-context return on the same tasks and episodes (mean ± std over seeds). "
                   "Peak MB: net tensor allocations during one decision (torch.profiler), plus the key/value "
                   "cache for `none`.\n")
    return md, save_png(plot_return_vs_budget(df), out_dir / FIGURE)
