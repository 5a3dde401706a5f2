"""Training-free compression study: what compressing the context costs a full-context model, measured.

The model of a run (notebook 01) is evaluated, unchanged, with its context
compressed at every decision. One *cell* is one compressor x budget x ``kv`` x evaluation
seed on the held-out tasks (one stream per task, seeded by the seed); ``kv`` says how the
compressed context is kept: ``reencode`` (the kept transitions re-encoded at every decision)
or ``evict`` (an evicting key/value cache of ``budget`` entries, :mod:`adkit.compress.evict`;
strategies without an eviction form have no such cells). The baselines' ``kv`` is their
backend: ``cache`` for ``none``, ``recompute`` for ``full``.

* ``return``: mean episode return of in-context rollouts whose every decision sees
  the compressed context (:func:`adkit.model.evaluate.rollout` with
  ``compressor=adkit.compress.context.build(name, budget, ...)``), over tasks and episodes;
  ``full_return`` is the full-context rollout's on the same tasks, seed and episodes
  (so both draw the same random numbers until their decisions differ).
* ``agreement`` / ``kl``: on contexts recorded from the full-context model's own
  rollout of that seed (``decisions`` steps spread over the stream, windows of
  ``n_transit``), the compressed-context policy against the full-context policy at
  the same decision: share of equal argmax actions and mean KL(full || compressed).
  The full-context policy is the rolling cache's, as in the rollout; compressed contexts go
  through the path a compressed rollout takes (:func:`adkit.compress.context.compressed_logits`);
  for ``none`` the whole history is re-encoded under the sliding window (the same function
  computed another way: agreement 1 and KL 0 up to float rounding check the cache), and for
  ``full`` the last ``n_transit`` transitions (DICP's re-encode, another function once the
  model has 2 or more layers and the stream outgrows the window); an ``evict`` cell's cache
  is stepped through the reference's whole stream and read at the same decisions.
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
reference policy), ``full`` (the last ``n_transit`` transitions re-encoded at every
decision, DICP's way), ``random`` (a random subset at the same
budget) and ``oracle`` (greedy leave-one-out, an upper bound). The oracle costs
O(n^2) model calls per decision, so it runs on a reduced protocol (:data:`REDUCED`:
fewer tasks, episodes, contexts and seeds); the ``tasks``, ``episodes`` and
``contexts`` columns and the ``note`` say so in every row, its ``full_return`` is the
full-context return on that same reduced protocol, and the summary counts its seeds.

The table ``RUN/study/training_free.csv`` gets one row per cell, rewritten
atomically after each cell: an interrupted study loses no finished cell, and a
rerun computes only the missing ones.

>>> run = Run.open("runs/quick")
>>> df = training_free_study(run, budgets=(40, 20, 10, 5), seeds=(0, 1, 2))
>>> write_outputs(df, run.study)  # training_free.md, return_vs_budget.png
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from adkit import compress, envs
from adkit.analysis.insights import kl, markdown_table
from adkit.compress.context import build, compressed_logits
from adkit.compress.cost import decision_cost
from adkit.compress.evict import KV, kv_forms
from adkit.data.tokens import INPUTS, Tokens
from adkit.io import write_text
from adkit.model.checkpoint import load
from adkit.model.evaluate import RolloutResult, rollout
from adkit.plots import save_png
from adkit.run import Run
from adkit.study.cells import check_budgets, check_names, profile_kwargs, read_table, run_cells
from adkit.study.figures import plot_cost, plot_return_vs_budget
from adkit.study.summaries import BASELINE_KV, BASELINES, TRAINING_FREE, plus_minus, summary_table, upgrade_table

MODE = TRAINING_FREE
KEY = ["compressor", "budget", "kv", "seed"]
COLUMNS = KEY + ["mode", "backend", "tasks", "episodes", "return", "full_return", "optimal", "agreement", "kl",
                 "contexts", "context_tokens", "rollout_step_ms", "decision_ms", "peak_mem_mb", "note"]
TABLE, SUMMARY, FIGURE, COST_FIGURE = "training_free.csv", "training_free.md", "return_vs_budget.png", "cost.png"


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


# ---- one seed's reference and one cell --------------------------------------------------------------


@dataclass
class Reference:
    """What every cell of one seed is compared with: the full-context rollout and contexts recorded from it.

    ``steps``: the recorded decision steps; ``contexts``: windows of ``n_transit`` before them,
    task-major ``(n_tasks * n_decisions, n_transit, ·)``; ``logits``: the full-context policy's
    there ``(N, A)``, from the rolling cache the rollout used; ``probe``: the contexts of the last
    recorded decision, one per task (cost probe); ``extra``: constructor arguments calibrated on
    the contexts.
    """

    result: RolloutResult
    steps: list[int]
    contexts: Tokens
    logits: Tensor
    probe: Tokens
    extra: dict[str, dict]

    def whole_history_logits(self, model) -> Tensor:
        """``(N, A)``: the same decisions with every transition before them re-encoded under the sliding
        window. The rolling cache computes this function: the ``none`` row checks that it does."""
        traj = self.result.trajectories
        return torch.stack([model(**traj.window(t, t))[:, -1] for t in self.steps], 1).flatten(0, 1)

    def protocol(self) -> Protocol:
        """The full protocol: every task, episode and recorded context of this reference."""
        return Protocol(len(self.result.tasks), self.result.returns.shape[-1], len(self.logits))


@torch.no_grad()
def reference(model, env_name: str, tasks, seed: int, episodes: int, decisions: int = 16) -> Reference:
    """Roll out the full-context model (rolling cache) on ``tasks`` with ``seed`` and record contexts."""
    res = rollout(model, env_name, tasks, seeds=[seed], episodes=episodes, progress=False)
    n = model.cfg.n_transit
    steps = decision_steps(n, res.steps, decisions)
    windows = [res.trajectories.window(t, n) for t in steps]
    contexts = Tokens(**{k: torch.stack([w[k] for w in windows], 1).flatten(0, 1)  # (S, D, n, ·) -> (S*D, n, ·)
                         for k in INPUTS})
    logits = cached_logits(model, res.trajectories, steps)  # (S*D, A)
    return Reference(res, steps, contexts, logits, windows[-1], {"profile": profile_kwargs(model, contexts)})


@torch.no_grad()
def cached_logits(model, traj, steps: list[int], cache=None) -> Tensor:
    """``(S * D, A)``: a cache's logits (default the rolling cache's) at decision ``steps`` of every
    stream of ``traj`` (stream-major, as the recorded contexts are)."""
    cache = model.new_cache(traj.actions.shape[0]) if cache is None else cache
    want, out = set(steps), {}
    for t in range(1, max(steps) + 1):
        logits = model.step(cache, *traj.token(t - 1))  # (S, A)
        if t in want:
            out[t] = logits
    return torch.stack([out[t] for t in steps], 1).flatten(0, 1)  # (S, D, A) -> (S*D, A)


@torch.no_grad()
def run_cell(model, env_name: str, tasks, ref: Reference, name: str, budget: int, seed: int,
             protocol: Protocol = Protocol(), kv: str = "reencode") -> dict:
    """One row of the table: ``name`` at ``budget`` kept as ``kv`` says on evaluation seed ``seed``
    (see the module doc), on ``protocol`` within the reference's (all its tasks, episodes and contexts)."""
    full = ref.protocol()
    p = protocol.within(full)
    pick = spread(full.contexts, p.contexts)
    contexts = ref.contexts.rows(pick)
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
                      **({"backend": "recompute"} if name == "full" else {"compressor": compressor, "kv": kv}))
    if name == "none":  # the full context, computed another way than the reference's cache
        logits, tokens = ref.whole_history_logits(model)[pick], model.cfg.n_transit
    elif kv == "evict":  # the evicting cache stepped through the reference's streams
        cache = model.new_evicting_cache(len(tasks), compressor, generator=gen)
        logits, tokens = cached_logits(model, ref.result.trajectories, ref.steps, cache)[pick], budget + 1
    else:  # "full": DICP's re-encode of the last n_transit; else the compressed context
        logits, tokens = compressed_logits(model, contexts, compressor, gen)
    logq = logits.double().log_softmax(-1)
    logp = ref.logits[pick].double().log_softmax(-1)
    ms, mb = decision_cost(model, ref.probe.rows(slice(0, p.tasks)), name, compressor, gen, kv=kv)
    notes = {"none": "full context, rolling key/value cache (reference)",
             "full": "DICP's hard context: the last n_transit re-encoded every step"}
    note = notes.get(name, "full protocol" if p == full else "reduced protocol (costly compressor)")
    if kv == "evict":
        note += "; evicting key/value cache"

    if name == "profile":
        note += profile_note(**ref.extra[name])
    return {
        "compressor": name, "budget": budget, "kv": BASELINE_KV.get(name, kv), "seed": seed, "mode": MODE,
        "backend": "cache" if name == "none" or kv == "evict" else "recompute",
        "tasks": p.tasks, "episodes": p.episodes,
        "return": float(res.returns.mean()),
        "full_return": float(base.mean()),
        "optimal": float(res.optimal[:p.tasks].mean()),
        "agreement": float((logq.argmax(-1) == logp.argmax(-1)).double().mean()),
        "kl": float(kl(logp, logq).clamp_min(0).mean()),  # clamp: float rounding of a zero KL
        "contexts": len(pick), "context_tokens": tokens,
        "rollout_step_ms": 1000 * res.seconds / res.steps, "decision_ms": ms, "peak_mem_mb": mb, "note": note,
    }


def profile_note(rule: str, size: int | None) -> str:
    """What a ``profile`` row's note adds: the rule and size it was profiled to (:func:`profile_rule` reads it)."""
    return f"; rule {rule}, size {size}"


def profile_rule(note: str) -> dict | None:
    """``rule`` and ``size`` of the ``profile`` compressor a row's ``note`` records (:func:`profile_note`),
    or None for a note without them."""
    found = re.search(r"; rule (\w+), size (\w+)", note)
    return found and {"rule": found[1], "size": None if found[2] == "None" else int(found[2])}


# ---- the study --------------------------------------------------------------------------------------


def _check_protocol(rows: list[dict], path: Path, reduced: dict[str, Protocol], full: Protocol) -> None:
    """Raise if a finished row was made with another (tasks, episodes, contexts) than this study would use."""
    for r in rows:
        want = reduced.get(r["compressor"], Protocol()).within(full)
        have = Protocol(int(r["tasks"]), int(r["episodes"]), int(r["contexts"]))
        if have != want:
            raise ValueError(f"{path} holds a {r['compressor']} row made with {have}, this study makes {want}; "
                             "remove the file or pass another out=")


def training_free_study(run: Run, compressors: Sequence[str] | None = None, budgets: Sequence[int] | None = None,
                        seeds: Sequence[int] | None = None, reduced: dict[str, Protocol] | None = None,
                        out: str | Path | None = None, progress: bool = True,
                        kvs: Sequence[str] | None = None) -> pd.DataFrame:
    """Run (or resume) the training-free study of a run; returns the whole table.

    Sized by the run's ``study`` config unless given: ``compressors`` (registry names; default
    ``study.compressors`` or every strategy; the baselines ``none`` and ``full``, budget
    ``n_transit``, are always added), ``budgets`` (transitions kept; default ``study.budgets``
    as fractions of ``n_transit``), ``seeds`` (evaluation seeds; default ``range(study.seeds)``),
    ``study.episodes`` per rollout and ``study.decisions`` recorded decisions per stream for
    agreement and KL, ``kvs`` (default ``study.kv``: how compressed contexts are kept; ``evict``
    cells only for strategies with an eviction form). ``reduced``: cheaper protocols per compressor
    (default :data:`REDUCED`).
    ``out``: the table (default ``RUN/study/training_free.csv``); finished cells in it are kept,
    not recomputed; rows made with another protocol raise ``ValueError``.
    """
    cfg, st = run.cfg, run.cfg.study
    model = load(run.require(run.weights, "train"))
    n = model.cfg.n_transit
    names = [c for c in check_names(compressors or st.compressors or study_compressors()) if c not in BASELINES]
    budgets = check_budgets(list(budgets) if budgets else st.transitions(st.budgets, n), n)
    seeds = [int(s) for s in seeds] if seeds is not None else list(range(st.seeds))
    episodes = st.episodes or cfg.eval.episodes
    reduced = REDUCED if reduced is None else reduced
    tasks = run.test_tasks
    kvs = list(kvs or st.kv)
    if not kvs or set(kvs) - set(KV):
        raise ValueError(f"kv must be 'reencode' and/or 'evict', got {kvs}")
    path = Path(out) if out else run.study / TABLE
    upgrade_table(path, COLUMNS)
    steps = decision_steps(n, episodes * envs.spec(cfg.env.name).horizon, st.decisions)
    _check_protocol(read_table(path, COLUMNS).to_dict("records"), path, reduced,
                    Protocol(len(tasks), episodes, len(tasks) * len(steps)))
    cells = [(s, c, b, BASELINE_KV.get(c, kv)) for i, s in enumerate(seeds) for c in [*BASELINES, *names]
             if i < (reduced.get(c, Protocol()).seeds or len(seeds))
             for b in ([n] if c in BASELINES else budgets)
             for kv in ([None] if c in BASELINES else kv_forms(c, kvs))]
    refs: dict[int, Reference] = {}  # the latest seed's reference (cells come seed by seed)

    def compute(seed: int, name: str, budget: int, kv: str) -> dict:
        if seed not in refs:
            refs.clear()
            refs[seed] = reference(model, cfg.env.name, tasks, seed, episodes, st.decisions)
        return run_cell(model, cfg.env.name, tasks, refs[seed], name, budget, seed, reduced.get(name, Protocol()),
                        "reencode" if name in BASELINES else kv)

    return run_cells(path, COLUMNS, cells, lambda r: (int(r["seed"]), r["compressor"], int(r["budget"]), r["kv"]),
                     compute, desc="training-free study", progress=progress)


# ---- summaries ---------------------------------------------------------------------------------------


def markdown_summary(df: pd.DataFrame) -> str:
    """The summary as a markdown table: mean ± std over seeds, share of the full-context return."""
    s = summary_table(df)
    view = pd.DataFrame({
        "compressor": s["compressor"], "budget": s["budget"], "kv": s["kv"], "seeds": s["seeds"],
        "return": plus_minus(s["return_mean"], s["return_std"], ".2f"),
        "share of full": plus_minus(100 * s["share_mean"], 100 * s["share_std"], ".0f", " %"),
        "agreement": s["agreement"], "KL": s["kl"], "tokens": s["context_tokens"],
        "decision ms": s["decision_ms"], "step ms": s["rollout_step_ms"], "peak MB": s["peak_mem_mb"],
        "protocol": [f"{t} tasks x {e} ep; {note}" for t, e, note in zip(s["tasks"], s["episodes"], s["note"])],
    })
    return markdown_table(view)


def write_outputs(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write the markdown summary, the return-vs-budget figure and the return-against-cost figure
    into ``out_dir``."""
    out_dir = Path(out_dir)
    md = out_dir / SUMMARY
    write_text(md, f"# Training-free compression study\n\n{markdown_summary(df)}\n\n"
                   "Share: return / full-context return on the same tasks and episodes (mean ± sample std over "
                   "seeds). Peak MB: net tensor allocations during one decision (torch.profiler), plus the "
                   "key/value cache for `none`.\n")
    return md, save_png(plot_return_vs_budget(df), out_dir / FIGURE), save_png(plot_cost(df), out_dir / COST_FIGURE)
