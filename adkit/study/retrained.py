"""Retrained compression study: what a compressor buys and costs once the model is trained for it.

For every compressor x budget x kv x seed the model of a run (notebook 01) is trained
again for its compressed context (``compress.strategy`` / ``compress.budget`` /
``compress.kv``), with the run's batch size and training seed ``seed``: from scratch for the run's
step budget (``study.init: scratch``), or starting from the run's own model for ``study.steps``
(``study.init: run``: fine-tuning, a fraction of the cost), then
evaluated in context on the held-out tasks with its context kept the same way at every
decision: ``reencode`` trains on windows compressed by
:func:`adkit.compress.context.compress_window`, the selection a re-encoding rollout makes;
``evict`` trains on whole windows under the keep mask of an evicting cache
(:func:`adkit.compress.evict.keep_mask`) and is evaluated with that cache. The baseline ``none`` is the
full-context model retrained the same way (same start, steps and seed). Attention-based
strategies score with the run's full-context model (the model whose attention
notebook 02 looked at), in training and in evaluation alike.

One row per cell, ``mode`` ``retrained``, ``kv`` as trained (``cache`` for ``none``), ``init`` how it
started (``scratch`` or ``run``):

* ``return``: mean episode return over the held-out tasks x ``eval.seeds`` streams
  (stream seeds ``1000 * seed + j``) x the episodes; ``full_return``: the retrained
  ``none`` model's on the same streams.
* cost: ``train_step_ms`` and ``train_peak_mem_mb`` (a training step without the
  update: batch, compression, forward, backward; median wall-clock and peak tensor
  memory, :func:`train_step_cost`);
  ``rollout_step_ms`` (the evaluation's wall-clock per environment step, all streams
  batched), ``decision_ms`` and ``peak_mem_mb`` (one steady-state decision of one stream
  per held-out task, as in the training-free study: :func:`adkit.compress.cost.decision_cost`);
  ``flops`` per decision and ``train_flops`` per training sequence, each the whole forward
  (projections, attention, MLP, head: :func:`decision_work`).

``RUN/study/retrained.csv`` gets a row per finished cell, rewritten atomically; a
cell's model trains in ``RUN/study/retrained/{compressor}-b{budget}-s{seed}/`` with
checkpoints, so an interrupted cell resumes where it stopped and a finished one is
never recomputed. ``workers > 1`` runs cells in parallel processes (one torch
thread each). :func:`results_table` joins these rows with the training-free study's
for the same cells into ``RUN/study/results.csv``.

>>> df = retrained_study(Run.open("runs/quick"), ["recency", "sink-recent"], budgets=(40, 20, 10))
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adkit import compress, envs
from adkit import threads as adkit_threads
from adkit.analysis.attention import window_contexts
from adkit.analysis.insights import markdown_table
from adkit.compress.context import compress_window, query_attention, scoring_rows
from adkit.compress.cost import decision_cost, decision_flops, forward_flops, peak_allocated_mb, time_ms
from adkit.compress.evict import keep_mask, kv_forms
from adkit.data.collect import load_for
from adkit.io import write_text
from adkit.model.checkpoint import load
from adkit.model.evaluate import rollout
from adkit.model.train import Trainer, loss_and_accuracy, seq_len, window_compressor
from adkit.plots import save_png
from adkit.run import Run
from adkit.study import training_free
from adkit.study.cells import check_budgets, check_names, profile_kwargs, read_table, run_cells, write_table
from adkit.study.figures import plot_attention_shift, plot_modes, plot_pareto
from adkit.study.summaries import RETRAINED, TRAINING_FREE, plus_minus, summary, upgrade_table

MODE = RETRAINED
KEY = ["compressor", "budget", "mode", "kv", "seed"]
COLUMNS = KEY + ["init", "return", "full_return", "optimal", "tasks", "episodes", "train_steps", "train_step_ms",
                 "train_peak_mem_mb", "rollout_step_ms", "decision_ms", "peak_mem_mb", "context_tokens",
                 "flops", "train_flops"]
TABLE, RESULTS = "retrained.csv", "results.csv"
# the original toolkit's six, the random baseline and StreamingLLM's sink + recent window
DEFAULT_COMPRESSORS = ("recency", "uniform", "attention", "threshold", "adaptive", "exponential", "random",
                       "sink-recent")
NOT_TRAINABLE = ("none", "full", "oracle")  # the baselines, and the oracle (O(n^2) model calls per window)
INITS = ("scratch", "run")  # where a retrained model starts (study.init): random weights, or the run's model


def decision_work(model_cfg, n_actions: int, name: str, budget: int, needs_attention: bool,
                  kv: str = "reencode", rows: int | None = None) -> tuple[int, int]:
    """FLOPs ``(per decision, per training sequence)`` of ``name`` at ``budget``, each a whole forward
    (:func:`adkit.compress.cost.forward_flops`).

    ``none``: a rolling-cache step and a training sequence of ``2 * n_transit`` tokens; a re-encoding
    compressor: the ``budget + 1`` kept tokens re-encoded, plus the full-window scoring pass of an
    attention-based strategy, reading ``rows`` query rows (:func:`adkit.compress.cost.scoring_flops`;
    in rollouts and in training alike); an evicting one: a step of its
    cache, and a whole training sequence (masked attention is computed densely, plus the scorer's
    pass for an attention-based strategy).
    """
    n = model_cfg.n_transit
    whole = forward_flops(model_cfg, 2 * n, 2 * n, n_actions)
    if name == "none":
        return decision_flops(model_cfg, n_actions), whole
    if kv == "evict":
        return decision_flops(model_cfg, n_actions, budget, evict=True), whole * (2 if needs_attention else 1)
    flops = decision_flops(model_cfg, n_actions, budget, needs_attention, rows)
    return flops, flops


def train_step_cost(trainer: Trainer) -> tuple[float, float]:
    """``(ms, peak MB)`` of one training step of ``trainer`` without the update: drawing and
    compressing a batch (with the scorer's pass for attention-based strategies), forward and
    backward. The weights do not change."""

    def step():
        tokens, keep = trainer.batch(trainer.train_sampler)
        loss, _ = loss_and_accuracy(trainer.model(**tokens, keep=keep), tokens.targets, trainer.t.loss)
        loss.backward()
        trainer.opt.zero_grad(set_to_none=True)

    return time_ms(step), peak_allocated_mb(step)


EQUAL_TARGETS = "equal-targets"  # RUN/study/<this>/: cells retrained re-encoded with equal_targets_batch windows


def equal_targets_batch(cfg, budget: int) -> int:
    """Re-encoded windows per step (``compress.batch``) that carry as many action targets, ``budget + 1``
    each, as a step of the full-context model of ``cfg`` (``train.batch_size`` sequences of
    :func:`~adkit.model.train.seq_len`)."""
    return cfg.train.batch_size * seq_len(cfg) // (budget + 1)


def equal_targets_cell(run: Run, budget: int) -> dict:
    """:func:`run_cell`'s keywords for a re-encoded cell of ``run`` at ``budget`` trained at equal targets
    (:func:`equal_targets_batch` windows a step), kept in ``RUN/study/equal-targets/``."""
    return dict(compress_kw={"batch": equal_targets_batch(run.cfg, budget)}, root=str(run.study / EQUAL_TARGETS))


def cell_run(run: Run, name: str, budget: int, seed: int, steps: int, compress_kw: dict | None = None,
             root: Path | None = None, kv: str = "reencode") -> Run:
    """The run of one retrained cell: the parent's config with training seed ``seed``, ``steps``
    steps, the parent's weights to start from if ``study.init`` is ``run``, and ``name`` at
    ``budget`` kept as ``kv`` says (``compress_kw``: more ``compress`` fields, e.g. ``batch``), in
    ``root`` (default the parent's ``study/retrained``)."""
    if run.cfg.study.init not in INITS:
        raise ValueError(f"study.init must be one of {INITS}, got {run.cfg.study.init!r}")
    compressed = name != "none"
    init = str(run.dir) if run.cfg.study.init == "run" else ""
    cfg = dataclasses.replace(
        run.cfg, train=dataclasses.replace(run.cfg.train, seed=seed, steps=steps, extra_seeds=[], init=init),
        compress=dataclasses.replace(run.cfg.compress, strategy=name if compressed else "none",
                                     budget=budget if compressed else 0, kv=kv if compressed else "reencode",
                                     **(compress_kw or {})))
    here = run.cell(name, budget, seed, kv)
    folder = here if root is None else Path(root) / here.name
    return dataclasses.replace(run, dir=folder, cfg=cfg)


def strategy_kwargs(run: Run, scorer, names: Sequence[str]) -> dict[str, dict]:
    """What of ``names`` needs more than a budget, from the run: the ``profile`` rule, profiled on
    ``scorer``'s attention over 64 of the run's training windows (:func:`profile_kwargs`)."""
    if "profile" not in names:
        return {}
    contexts = window_contexts(run.cfg, load_for(run.cfg, run.require(run.histories, "collect")), 64, seed=0).inputs
    return {"profile": profile_kwargs(scorer, contexts)}


def run_cell(run: Run, name: str, budget: int, seed: int, kv: str, steps: int, episodes: int, extra: dict,
             threads: int = 0, progress: bool = False, compress_kw: dict | None = None,
             root: str | None = None) -> dict:
    """Train and evaluate one cell (resuming its training if it was interrupted); returns its row.
    Every argument pickles, so worker processes can run it."""
    if threads:
        adkit_threads.configure(threads)
    scorer = load(run.weights)
    n = scorer.cfg.n_transit
    kv = "reencode" if name == "none" else kv
    cell = cell_run(run, name, budget, seed, steps, compress_kw, None if root is None else Path(root), kv)
    trainer = Trainer(cell, load_for(run.cfg, run.require(run.histories, "collect")), progress=progress,
                      scorer=scorer, compressor_kw=extra.get(name, {}))
    trainer.fit()
    train_ms, train_mb = train_step_cost(trainer)
    model = trainer.model.eval()
    tasks = run.test_tasks
    streams = [1000 * seed + j for j in range(run.cfg.eval.seeds)]
    compressor = trainer.compressor
    evict = kv == "evict"
    res = rollout(model, run.cfg.env.name, tasks, seeds=streams, episodes=episodes, compressor=compressor,
                  scorer=None if evict else scorer, progress=progress, kv=kv)
    res.write_csv(cell.dir / "returns.csv")
    probe = res.trajectories.window(res.steps - 1, n).rows(slice(None, None, len(streams)))  # one stream per task
    gen = torch.Generator().manual_seed(seed)
    ms, mb = decision_cost(model, probe, name, compressor, gen, scorer=None if evict else scorer, kv=kv)
    needs = bool(compressor is not None and compressor.needs_attention)
    flops, train_flops = decision_work(model.cfg, model.n_actions, name, budget, needs, kv,
                                       scoring_rows(compressor) if needs else None)
    return {
        "compressor": name, "budget": budget, "mode": MODE, "kv": "cache" if name == "none" else kv, "seed": seed,
        "init": run.cfg.study.init, "return": float(res.returns.mean()), "full_return": float("nan"),
        "optimal": float(res.optimal.mean()),
        "tasks": len(tasks), "episodes": episodes, "train_steps": steps, "train_step_ms": train_ms,
        "train_peak_mem_mb": train_mb, "rollout_step_ms": 1000 * res.seconds / res.steps, "decision_ms": ms,
        "peak_mem_mb": mb, "context_tokens": n if name == "none" else budget + 1, "flops": flops,
        "train_flops": train_flops,
    }


def _with_full_return(rows: list[dict]) -> pd.DataFrame:
    """The rows with ``full_return`` set from the ``none`` row of the same seed (NaN until it exists)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    full = df[df["compressor"] == "none"].set_index("seed")["return"]
    df["full_return"] = df["seed"].map(full).astype(float)
    return df


def retrained_study(run: Run, compressors: Sequence[str] | None = None, budgets: Sequence[int] | None = None,
                    seeds: Sequence[int] | None = None, progress: bool = True,
                    kvs: Sequence[str] | None = None) -> pd.DataFrame:
    """Run (or resume) the retrained study of a run; returns its table (``RUN/study/retrained.csv``).

    Sized by the run's ``study`` config unless given: ``compressors`` (default
    ``study.retrain_compressors`` or :data:`DEFAULT_COMPRESSORS`; the baseline ``none``, full
    context at budget ``n_transit``, is always added), ``budgets`` (transitions kept; default
    ``study.retrain_budgets`` as fractions of ``n_transit``), ``seeds`` (training seeds; default
    ``range(study.seeds)``; each cell's evaluation streams derive from its seed), ``study.steps``
    training steps per model from ``study.init``, ``study.episodes`` per evaluation and ``study.workers`` cells at
    once, each in its own process with one torch thread; ``kvs`` (default ``study.kv``): how the
    compressed contexts are kept (``evict`` cells only for strategies with an eviction form).
    """
    st = run.cfg.study
    scorer = load(run.require(run.weights, "train"))
    n = scorer.cfg.n_transit
    names = check_names(compressors or st.retrain_compressors or DEFAULT_COMPRESSORS, NOT_TRAINABLE)
    budgets = check_budgets(list(budgets) if budgets else st.transitions(st.retrain_budgets, n), n)
    seeds = [int(s) for s in seeds] if seeds is not None else list(range(st.seeds))
    steps, episodes = st.steps or run.cfg.train.steps, st.episodes or run.cfg.eval.episodes
    run.require(run.histories, "collect")  # fail before any cell starts
    kvs = list(kvs or st.kv)
    path = run.study / TABLE
    upgrade_table(path, COLUMNS)
    for r in read_table(path, COLUMNS).to_dict("records"):
        if (int(r["train_steps"]), int(r["episodes"]), r["init"]) != (steps, episodes, st.init):
            raise ValueError(f"{path} holds cells made with {int(r['train_steps'])} training steps from "
                             f"{r['init']} and {int(r['episodes'])} episodes, this study makes {steps} from "
                             f"{st.init} and {episodes}; remove the file or set the same study.steps, "
                             "study.init and study.episodes")
    cells = [(c, b, s, kv) for s in seeds for c, bs in [("none", [n]), *((c, budgets) for c in names)] for b in bs
             for kv in (["cache"] if c == "none" else kv_forms(c, kvs))]
    extra = strategy_kwargs(run, scorer, names)
    parallel = st.workers > 1 or st.executor != "local"
    threads = max(1, adkit_threads.share() // st.workers) if st.executor == "local" else 1  # per cell process
    compute = partial(run_cell, run, steps=steps, episodes=episodes, extra=extra, threads=threads if parallel else 0)
    return run_cells(path, COLUMNS, cells, lambda r: (r["compressor"], int(r["budget"]), int(r["seed"]), r["kv"]),
                     compute, desc="retrained study", workers=st.workers, progress=progress, finish=_with_full_return,
                     executor=st.executor, address=st.address)


# ---- both modes in one table ------------------------------------------------------------------------


def scorer_of(name: str, budget: int, note: str):
    """What decides how a training-free row scored its contexts: the ``profile`` compressor its note
    records (its rule decides whether it reads attention), else ``name``'s class (its defaults: SnapKV's
    window)."""
    rule = training_free.profile_rule(str(note)) if name == "profile" else None  # str: a missing note reads NaN
    return compress.make(name, budget, **rule) if rule else compress.COMPRESSORS[name]


def results_table(run: Run) -> pd.DataFrame:
    """``RUN/study/results.csv``: the retrained rows and the training-free rows of the same
    compressors and budgets, in :data:`COLUMNS`.

    A training-free row's model is the run's full-context model (from scratch, ``train.steps``), so
    its cost per training step is the retrained ``none`` model's (same sizes; seed 0's measurement); its
    seed is the evaluation seed and its ``full_return`` the run's full-context return on it.
    """
    re_df = read_table(run.study / TABLE, COLUMNS)
    tf = read_table(run.study / training_free.TABLE, training_free.COLUMNS)
    cells = set(zip(re_df["compressor"], re_df["budget"], re_df["kv"]))
    cells |= {("none", b, "cache") for b in re_df["budget"]}
    tf = tf[[cell in cells for cell in zip(tf["compressor"], tf["budget"], tf["kv"])]]
    base = re_df[re_df["compressor"] == "none"]
    if len(tf) and len(base):
        model_cfg = run.cfg.model
        n_actions = envs.spec(run.cfg.env.name).n_actions
        kinds = [scorer_of(c, int(b), note) for c, b, note in zip(tf["compressor"], tf["budget"], tf["note"])]
        work = [decision_work(model_cfg, n_actions, c, int(b), kind.needs_attention, kv, scoring_rows(kind))
                for c, b, kv, kind in zip(tf["compressor"], tf["budget"], tf["kv"], kinds)]
        tf = tf.assign(mode=TRAINING_FREE, init="scratch", train_steps=run.cfg.train.steps,  # the run's model
                       train_step_ms=float(base["train_step_ms"].mean()),
                       train_peak_mem_mb=float(base["train_peak_mem_mb"].mean()),
                       flops=[w[0] for w in work], train_flops=int(base["train_flops"].iloc[0]))
        both = pd.concat([re_df, tf[COLUMNS]], ignore_index=True)
    else:
        both = re_df
    write_table(both, run.study / RESULTS, COLUMNS)
    return both


def recommended(run: Run) -> str | None:
    """The compressor notebook 03 recommends most often across layers (``RUN/attention/insights.json``)."""
    path = run.insights
    if not path.exists():
        return None
    names = [layer["name"] for layer in json.loads(path.read_text())["layers"]]
    return Counter(names).most_common(1)[0][0] if names else None


def headline(df: pd.DataFrame, run: Run | None = None, targets: dict[int, float] | None = None) -> list[str]:
    """Sentences: per budget the best retrained strategy and its share against the target
    (95% at 20, 90% at 10 by default), the saving in decision time, memory and attention
    FLOPs against the full-context rolling cache, and whether 03's recommendation is the best."""
    targets = targets or {20: 0.95, 10: 0.90}
    s = summary(df)
    re_s = s[s["mode"] == RETRAINED]
    base = re_s[re_s["compressor"] == "none"]
    if base.empty:
        return ["no full-context baseline yet"]
    b0 = base.iloc[0]
    rec = recommended(run) if run is not None else None
    lines = []
    for budget in sorted(set(re_s["budget"]) - set(base["budget"]), reverse=True):
        rows = re_s[(re_s["budget"] == budget) & (re_s["compressor"] != "none")]
        if rows.empty:
            continue
        best = rows.sort_values("share_mean", ascending=False).iloc[0]
        kept_as = " (evicting cache)" if best["kv"] == "evict" else ""
        target = targets.get(int(budget))
        verdict = "" if target is None else (f"; target {target:.0%}: "
                                             f"{'met' if best['share_mean'] >= target else 'NOT met'}")
        spread = f" ± {best['share_std']:.0%}" if best["seeds"] > 1 else " (1 seed)"
        line = (f"budget {budget} of {int(b0['budget'])}: best retrained `{best['compressor']}`{kept_as} keeps "
                f"{best['share_mean']:.0%}{spread} of the full-context return"
                f"{verdict}; decision {best['decision_ms']:.2f} ms vs {b0['decision_ms']:.2f} ms (cached full "
                f"context), peak {best['peak_mem_mb']:.2f} MB vs {b0['peak_mem_mb']:.2f} MB, FLOPs per decision "
                f"x{best['flops'] / b0['flops']:.2f}, training step {best['train_step_ms']:.0f} ms vs "
                f"{b0['train_step_ms']:.0f} ms")
        if rec is not None:
            mine = rows[rows["compressor"] == rec].sort_values("share_mean", ascending=False)
            line += (f"; 03 recommends `{rec}`: " + (f"{mine['share_mean'].iloc[0]:.0%}"
                                                     + (" (the best)" if rec == best["compressor"] else "")
                                                     if len(mine) else "not in this study"))
        lines.append(line)
    return lines


def markdown_summary(df: pd.DataFrame) -> str:
    """:func:`summary` as a markdown table (mean ± std over seeds; FLOPs relative to the cached full context)."""
    s = summary(df)
    base = s[(s["compressor"] == "none") & (s["mode"] == RETRAINED)]
    ref = float(base["flops"].iloc[0]) if len(base) else float("nan")
    view = pd.DataFrame({
        "compressor": s["compressor"], "budget": s["budget"], "mode": s["mode"], "kv": s["kv"], "seeds": s["seeds"],
        "return": plus_minus(s["return_mean"], s["return_std"], ".2f"),
        "share of full": plus_minus(100 * s["share_mean"], 100 * s["share_std"], ".0f", " %"),
        "train step ms": s["train_step_ms"], "train peak MB": s["train_peak_mem_mb"],
        "rollout step ms": s["rollout_step_ms"], "decision ms": s["decision_ms"], "peak MB": s["peak_mem_mb"],
        "FLOPs (x full)": s["flops"] / ref,
    })
    return markdown_table(view)


def best_cell(df: pd.DataFrame) -> tuple[str, int, str]:
    """``(compressor, budget, kv)`` of the retrained cell with the best mean share at the smallest budget."""
    s = summary(df)
    s = s[(s["mode"] == RETRAINED) & (s["compressor"] != "none")]
    if s.empty:
        raise ValueError("no retrained compressed cell in the table yet")
    smallest = s[s["budget"] == s["budget"].min()]
    best = smallest.sort_values("share_mean", ascending=False).iloc[0]
    return str(best["compressor"]), int(best["budget"]), str(best["kv"])


def write_outputs(df: pd.DataFrame, run: Run) -> list[Path]:
    """Into ``RUN/study``: ``results.md`` (headline and table) and the figures: both modes against
    budget, the Pareto front, and the attention of the best compressed model (:func:`best_cell`,
    seed 0) against the full model's."""
    md = run.study / "results.md"
    lines = "\n".join(f"- {line}" for line in headline(df, run))
    write_text(md, f"# Compression: retrained against training-free\n\n{lines}\n\n{markdown_summary(df)}\n\n"
                   "Share: return / full-context return of the same mode and seed (retrained: the `none` model "
                   "retrained with the same steps and seed; training-free: the run's model); ± is the sample "
                   "std over seeds. Costs: one decision of one stream per held-out task (decision ms, peak MB: "
                   "tensor memory incl. the key/value cache for `none`), per environment step of the rollout, a "
                   "training step without the update (batch, compression, forward, backward); FLOPs of a whole "
                   "decision (projections, attention, MLP, head) relative to the cached full context.\n")
    name, budget, kv = best_cell(df)
    seed = int(df.loc[(df["compressor"] == name) & (df["mode"] == MODE), "seed"].min())
    figures = {"return_vs_budget_modes.png": lambda: plot_modes(df), "pareto.png": lambda: plot_pareto(df),
               "attention_compressed.png": lambda: plot_attention_shift(attention_shift(run, name, budget, seed,
                                                                                        kv=kv))}
    return [md, *(save_png(plot(), run.study / filename) for filename, plot in figures.items())]


def compression_study(run: Run, compressors: Sequence[str] | None = None, budgets: Sequence[int] | None = None,
                      seeds: Sequence[int] | None = None, progress: bool = True,
                      kvs: Sequence[str] | None = None) -> pd.DataFrame:
    """Both modes for the same cells: the training-free study (evaluation seeds ``seeds``), the
    retrained study, then ``RUN/study/results.csv``, ``results.md`` and the figures; returns the
    joined table. Resumable: finished cells of either mode are kept. Sized like
    :func:`retrained_study`."""
    st = run.cfg.study
    names = check_names(compressors or st.retrain_compressors or DEFAULT_COMPRESSORS, NOT_TRAINABLE)
    budgets = list(budgets) if budgets else st.transitions(st.retrain_budgets, run.cfg.model.n_transit)
    training_free.training_free_study(run, names, budgets, seeds, progress=progress, kvs=kvs)
    retrained_study(run, names, budgets, seeds, progress, kvs)
    df = results_table(run)
    write_outputs(df, run)
    return df


# ---- attention after compression, and per-episode curves ----------------------------------------------


@torch.no_grad()
def attention_shift(run: Run, name: str, budget: int, seed: int = 0, contexts: int = 64,
                    kv: str = "reencode") -> pd.DataFrame:
    """Where the decision's attention goes (layer- and head-resolved means over ``contexts``
    training windows): the run's full model on full windows, and the retrained ``name`` @
    ``budget`` model on the same windows compressed as it was trained (``kv``: re-encoded, or
    whole under the evicting cache's keep mask). One row per model,
    layer and distance back (in transitions) with the mean attention there relative to
    uniform (mass x visible tokens: 1 means as much as every visible token gets on average,
    so contexts of different lengths compare)."""
    full = load(run.require(run.weights, "train"))
    cell = Run.open(run.require(run.cell(name, budget, seed, kv), "study"))
    small = load(cell.weights)
    h = load_for(run.cfg, run.require(run.histories, "collect"))
    inputs = window_contexts(run.cfg, h, contexts, seed=seed).inputs  # (B, n_transit, ·)
    compressor = window_compressor(cell.cfg, scorer=full)
    gen = torch.Generator().manual_seed(seed)
    if kv == "evict":  # the whole window, each query masked to what the cache holds there
        feed = query_attention(full, inputs, per_head=True) if compressor.needs_attention else None
        kept, keep = inputs, keep_mask(compressor, inputs, run.cfg.model.n_transit, feed, gen)
    else:
        kept, keep = compress_window(compressor, inputs, small.positions, full, gen), None
    small_label = f"{name} @ {budget} (retrained{', evicting cache' if kv == 'evict' else ''})"
    rows = []
    for label, model, tokens, mask in (("full context", full, inputs, None), (small_label, small, kept, keep)):
        _, cache = model.run_with_cache(**tokens, names="hook_pattern", keep=mask)
        visible = tokens.length if mask is None else budget + 1
        pattern = visible * cache.stack("pattern")[:, :, :, -1, :-1].mean(2)  # (layer, B, H, L, L) -> (layer, B, L - 1)
        back = (tokens.positions[:, -1:] - tokens.positions[:, :-1]).numpy()  # (B, L - 1) steps back
        for layer, rel in enumerate(pattern.numpy()):
            by_back = pd.Series(rel.ravel()).groupby(back.ravel()).mean()
            rows += [{"model": label, "layer": layer, "back": int(b), "relative_attention": float(v)}
                     for b, v in by_back.items()]
    return pd.DataFrame(rows)


def episode_curves(run: Run, table: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    """Per retrained cell (compressor, budget): the per-seed mean return per episode ``(seeds, episodes)``;
    a cell trained for an evicting cache is named ``{compressor} evict``."""
    curves = {}
    for (name, budget, kv), g in table[table["mode"] == RETRAINED].groupby(["compressor", "budget", "kv"]):
        runs = []
        for seed in sorted(g["seed"]):
            path = run.cell(name, int(budget), int(seed), kv) / "returns.csv"
            if path.exists():
                runs.append(pd.read_csv(path).groupby("episode")["return"].mean().to_numpy())
        if runs:
            curves[f"{name} evict" if kv == "evict" else name, int(budget)] = np.array(runs)
    return curves


