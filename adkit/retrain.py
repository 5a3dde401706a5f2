"""Retrained compression study: what a compressor buys and costs once the model is trained for it.

For every compressor x budget x seed the model of a run (notebook 01) is trained
again from scratch on compressed windows (``train.compressor`` / ``train.budget``:
every training window compressed by :func:`adkit.context.compress_window`, the same
selection a compressed rollout makes), with the run's step budget and batch size
and training seed ``seed``, then evaluated in context on the held-out tasks with its
context compressed the same way at every decision. The baseline ``none`` is the
full-context model retrained the same way (same steps, same seed). Attention-based
strategies score with the run's full-context model (the model whose attention
notebook 02 looked at), in training and in evaluation alike.

One row per cell, ``mode`` ``retrained``:

* ``return``: mean episode return over the held-out tasks x ``eval.seeds`` streams
  (stream seeds ``1000 * seed + j``) x the episodes; ``full_return``: the retrained
  ``none`` model's on the same streams.
* cost: ``train_step_ms`` and ``train_peak_mem_mb`` (a training step without the
  update: batch, compression, forward, backward; median wall-clock and peak tensor
  memory, :func:`train_step_cost`);
  ``rollout_step_ms`` (the evaluation's wall-clock per environment step, all streams
  batched), ``decision_ms`` and ``peak_mem_mb`` (one steady-state decision of one stream
  per held-out task, as in the training-free study: :func:`adkit.study.decision_cost`);
  ``attn_flops`` per decision and ``train_attn_flops`` per training sequence
  (:func:`attention_work`).

``RUN/study/retrained.csv`` gets a row per finished cell, rewritten atomically; a
cell's model trains in ``RUN/study/retrained/{compressor}-b{budget}-s{seed}/`` with
checkpoints, so an interrupted cell resumes where it stopped and a finished one is
never recomputed. ``workers > 1`` runs cells in parallel processes (one torch
thread each). :func:`results_table` joins these rows with the training-free study's
for the same cells into ``RUN/study/results.csv``.

>>> df = retrained_study("runs/quick", ["recency", "sink-recent"], budgets=(40, 20, 10), seeds=(0, 1, 2))
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from adkit import compress, envs, study
from adkit.collect import default_path
from adkit.cost import attention_flops, causal_pairs, peak_allocated_mb, time_ms
from adkit.evaluate import rollout
from adkit.study import decision_cost, profile_kwargs, write_table

MODE = "retrained"
KEY = ["compressor", "budget", "mode", "seed"]
COLUMNS = KEY + ["return", "full_return", "optimal", "tasks", "episodes", "train_steps", "train_step_ms",
                 "train_peak_mem_mb", "rollout_step_ms", "decision_ms", "peak_mem_mb", "context_tokens",
                 "attn_flops", "train_attn_flops"]
TABLE, RESULTS = "retrained.csv", "results.csv"
# the original toolkit's six, the random baseline and StreamingLLM's sink + recent window
DEFAULT_COMPRESSORS = ("recency", "uniform", "attention", "threshold", "adaptive", "exponential", "random",
                       "sink-recent")


def cell_dir(run_dir: str | Path, name: str, budget: int, seed: int, root: str | Path | None = None) -> Path:
    """Where the model of one retrained cell trains (under ``root``, default ``RUN/study/retrained``)."""
    return Path(root or Path(run_dir) / "study" / "retrained") / f"{name}-b{budget}-s{seed}"


def attention_work(model_cfg, name: str, budget: int, needs_attention: bool) -> tuple[int, int]:
    """Attention FLOPs ``(per decision, per training sequence)`` of ``name`` at ``budget``.

    ``none``: a rolling-cache step (one query over ``n_transit`` keys) and a training
    sequence of ``2 * n_transit`` tokens in the ``n_transit`` window; a compressor:
    the ``budget + 1`` kept tokens re-encoded, plus the full-window scoring pass of an
    attention-based strategy (in rollouts and in training alike).
    """
    n, flops = model_cfg.n_transit, lambda pairs: attention_flops(model_cfg.tf_n_layer, model_cfg.tf_n_embd, pairs)
    if name == "none":
        return flops(n), flops(causal_pairs(2 * n, n))
    kept = causal_pairs(budget + 1) + (causal_pairs(n) if needs_attention else 0)
    return flops(kept), flops(kept)


def train_step_cost(trainer) -> tuple[float, float]:
    """``(ms, peak MB)`` of one training step of ``trainer`` without the update: drawing and
    compressing a batch (with the scorer's pass for attention-based strategies), forward and
    backward. The weights do not change."""
    from adkit.train import loss_and_accuracy

    def step():
        inputs, targets = trainer.batch(trainer.train_sampler)
        loss, _ = loss_and_accuracy(trainer.model(**inputs), targets, trainer.t.loss)
        loss.backward()
        trainer.opt.zero_grad(set_to_none=True)

    return time_ms(step), peak_allocated_mb(step)


def run_cell(run_dir: str | Path, name: str, budget: int, seed: int, steps: int, episodes: int,
             histories: str | Path, extra: dict, threads: int = 0, progress: bool = False,
             train: dict | None = None, root: str | Path | None = None) -> dict:
    """Train and evaluate one cell (resuming its training if it was interrupted); returns its row.

    ``train``: more ``TrainConfig`` fields for this cell (e.g. ``compressed_batch``); ``root``:
    where its model trains (:func:`cell_dir`)."""
    from adkit.histories import load as load_histories
    from adkit.model import load
    from adkit.pipeline import run_config
    from adkit.train import Trainer

    if threads:
        torch.set_num_threads(threads)
    cfg = run_config(run_dir)
    scorer = load(run_dir)
    n = scorer.cfg.n_transit
    compressed = name != "none"
    cell_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, seed=seed, steps=steps, compressor=name if compressed else "none",
        budget=budget if compressed else 0, **(train or {})))
    out = cell_dir(run_dir, name, budget, seed, root)
    trainer = Trainer(cell_cfg, load_histories(histories), out, progress=progress, scorer=scorer,
                      compressor_kw=extra.get(name, {}))
    trainer.run()
    train_ms, train_mb = train_step_cost(trainer)
    model = trainer.model.eval()
    _, tasks = envs.task_split(cfg.env.name, cfg.env.split_seed, cfg.env.train_ratio)
    streams = [1000 * seed + j for j in range(cfg.eval.seeds)]
    compressor = trainer.compressor
    res = rollout(model, cfg.env.name, tasks, seeds=streams, episodes=episodes, compressor=compressor,
                  scorer=scorer, progress=False)
    res.write_csv(out / "returns.csv")
    probe = {k: v[::len(streams)] for k, v in res.history.window(res.steps - 1, n).items()}  # one stream per task
    gen = torch.Generator().manual_seed(seed)
    ms, mb = decision_cost(model, probe, name, compressor, gen, scorer=scorer)
    needs = bool(compressor is not None and compressor.needs_attention)
    flops, train_flops = attention_work(model.cfg, name, budget, needs)
    return {
        "compressor": name, "budget": budget, "mode": MODE, "seed": seed,
        "return": float(res.returns.mean()), "full_return": float("nan"), "optimal": float(res.optimal.mean()),
        "tasks": len(tasks), "episodes": episodes, "train_steps": steps, "train_step_ms": train_ms,
        "train_peak_mem_mb": train_mb, "rollout_step_ms": 1000 * res.seconds / res.steps, "decision_ms": ms,
        "peak_mem_mb": mb, "context_tokens": n if name == "none" else budget + 1, "attn_flops": flops,
        "train_attn_flops": train_flops,
    }


def read_table(path: str | Path) -> pd.DataFrame:
    """A table of :data:`COLUMNS` at ``path`` (empty when there is none yet)."""
    return study.read_table(path, COLUMNS)


def _with_full_return(rows: list[dict]) -> pd.DataFrame:
    """The rows with ``full_return`` set from the ``none`` row of the same seed (NaN until it exists)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    full = df[df["compressor"] == "none"].set_index("seed")["return"]
    df["full_return"] = df["seed"].map(full).astype(float)
    return df


def _check_names(compressors: Sequence[str] | None) -> list[str]:
    names = list(dict.fromkeys(compressors or DEFAULT_COMPRESSORS))
    not_trainable = ("none", "full", "oracle")  # the baselines, and the oracle (O(n^2) model calls per window)
    bad = [c for c in names if c not in compress.COMPRESSORS or c in not_trainable]
    if bad:
        known = [c for c in compress.COMPRESSORS if c not in not_trainable]
        raise ValueError(f"cannot retrain with {bad}; strategies: {', '.join(known)}")
    return names


def retrained_study(run_dir: str | Path, compressors: Sequence[str] | None = None,
                    budgets: Sequence[int] = (40, 20, 10), seeds: Sequence[int] = (0, 1, 2),
                    steps: int | None = None, episodes: int | None = None, workers: int = 1,
                    histories: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the retrained study of a run; returns its table (``RUN/study/retrained.csv``).

    Args:
        run_dir: a run of notebook 01 / ``adkit train``.
        compressors: strategies to retrain with (default :data:`DEFAULT_COMPRESSORS`);
            the baseline ``none`` (full context, budget ``n_transit``) is always added.
        budgets: transitions kept, each in ``1 .. n_transit - 1``.
        seeds: training seeds (each cell's evaluation streams derive from its seed).
        steps: training steps of every cell, the baseline's included (default: the run's).
        episodes: in-context episodes of the evaluation (default: the run's ``eval.episodes``).
        workers: cells run at once, each in its own process with one torch thread.
        histories: the learning histories (default: the profile's ``data/`` file).
    """
    from adkit.model import load
    from adkit.pipeline import require, run_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    scorer = load(run_dir)
    n = scorer.cfg.n_transit
    names = _check_names(compressors)
    budgets = study.check_budgets(budgets, n)
    steps, episodes = steps or cfg.train.steps, episodes or cfg.eval.episodes
    hist = require(Path(histories) if histories else default_path(cfg),
                   f"`adkit collect -c {cfg.profile}` (notebook 01_train)")
    path = run_dir / "study" / TABLE
    rows = read_table(path).to_dict("records")
    for r in rows:
        if int(r["train_steps"]) != steps or int(r["episodes"]) != episodes:
            raise ValueError(f"{path} holds cells made with {int(r['train_steps'])} training steps and "
                             f"{int(r['episodes'])} episodes, this study makes {steps} and {episodes}; "
                             "remove the file or pass the same steps and episodes")
    cells = [(c, b, s) for s in seeds for c, bs in [("none", [n]), *((c, budgets) for c in names)] for b in bs]
    done = {(r["compressor"], int(r["budget"]), int(r["seed"])) for r in rows}
    todo = [cell for cell in cells if cell not in done]
    extra = {}
    if "profile" in names and todo:
        from adkit.attention import window_contexts
        from adkit.histories import load as load_histories

        contexts = window_contexts(cfg, load_histories(hist), 64, seed=0).inputs
        extra["profile"] = profile_kwargs(scorer, contexts)
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="retrained study", disable=not progress)

    def finish(row: dict) -> None:
        rows.append(row)
        write_table(_with_full_return(rows), path, COLUMNS)
        bar.update()

    common = dict(steps=steps, episodes=episodes, histories=str(hist), extra=extra)
    if workers <= 1:
        for name, budget, seed in todo:
            bar.set_postfix_str(f"{name} @ {budget}, seed {seed}")
            finish(run_cell(run_dir, name, budget, seed, **common))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_cell, str(run_dir), name, budget, seed, threads=1, **common)
                       for name, budget, seed in todo]
            for future in as_completed(futures):
                finish(future.result())
    bar.close()
    return read_table(path)


# ---- both modes in one table ------------------------------------------------------------------------


def results_table(run_dir: str | Path) -> pd.DataFrame:
    """``RUN/study/results.csv``: the retrained rows and the training-free rows of the same
    compressors and budgets, in :data:`COLUMNS`.

    A training-free row's model is the run's full-context model, so its training cost is
    the retrained ``none`` model's (same sizes, steps and seed 0's measurement); its seed
    is the evaluation seed and its ``full_return`` the run's full-context return on it.
    """
    study_dir = Path(run_dir) / "study"
    re_df = read_table(study_dir / TABLE)
    tf = study.read_table(study_dir / study.TABLE)
    pairs = set(zip(re_df["compressor"], re_df["budget"])) | {("none", b) for b in re_df["budget"]}
    tf = tf[[(c, b) in pairs for c, b in zip(tf["compressor"], tf["budget"])]]
    base = re_df[re_df["compressor"] == "none"]
    if len(tf) and len(base):
        from adkit.model import load

        model_cfg = load(run_dir).cfg
        needs = {c: compress.COMPRESSORS[c].needs_attention for c in tf["compressor"]}
        work = [attention_work(model_cfg, c, int(b), needs[c]) for c, b in zip(tf["compressor"], tf["budget"])]
        tf = tf.assign(mode="training-free", train_steps=int(base["train_steps"].iloc[0]),
                       train_step_ms=float(base["train_step_ms"].mean()),
                       train_peak_mem_mb=float(base["train_peak_mem_mb"].mean()),
                       attn_flops=[w[0] for w in work], train_attn_flops=int(base["train_attn_flops"].iloc[0]))
        both = pd.concat([re_df, tf[COLUMNS]], ignore_index=True)
    else:
        both = re_df
    write_table(both, study_dir / RESULTS, COLUMNS)
    return both


def recommended(run_dir: str | Path) -> str | None:
    """The compressor notebook 03 recommends most often across layers (``RUN/attention/insights.json``)."""
    path = Path(run_dir) / "attention" / "insights.json"
    if not path.exists():
        return None
    names = [layer["name"] for layer in json.loads(path.read_text())["layers"]]
    return Counter(names).most_common(1)[0][0] if names else None


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per compressor x budget x mode: return and share of the full-context return (mean and
    std over seeds), and the mean costs; budgets largest first, best share first."""
    df = df.assign(share=df["return"] / df["full_return"].where(df["full_return"] > 0))
    g = df.groupby(["compressor", "budget", "mode"])
    out = g.agg(seeds=("seed", "nunique"), return_mean=("return", "mean"), return_std=("return", "std"),
                share_mean=("share", "mean"), share_std=("share", "std"), train_step_ms=("train_step_ms", "mean"),
                train_peak_mem_mb=("train_peak_mem_mb", "mean"), rollout_step_ms=("rollout_step_ms", "mean"),
                decision_ms=("decision_ms", "mean"), peak_mem_mb=("peak_mem_mb", "mean"),
                attn_flops=("attn_flops", "mean")).reset_index()
    out = out.fillna({"return_std": 0.0, "share_std": 0.0})
    out["rank"] = (out["compressor"] != "none").astype(int)
    out = out.sort_values(["rank", "budget", "mode", "share_mean"], ascending=[True, False, True, False])
    return out.drop(columns="rank").reset_index(drop=True)


def headline(df: pd.DataFrame, run_dir: str | Path | None = None, targets: dict[int, float] | None = None) -> list[str]:
    """Sentences: per budget the best retrained strategy and its share against the target
    (95% at 20, 90% at 10 by default), the saving in decision time, memory and attention
    FLOPs against the full-context rolling cache, and whether 03's recommendation is the best."""
    targets = targets or {20: 0.95, 10: 0.90}
    s = summary(df)
    re_s = s[s["mode"] == MODE]
    base = re_s[re_s["compressor"] == "none"]
    if base.empty:
        return ["no full-context baseline yet"]
    b0 = base.iloc[0]
    rec = recommended(run_dir) if run_dir is not None else None
    lines = []
    for budget in sorted(set(re_s["budget"]) - set(base["budget"]), reverse=True):
        rows = re_s[(re_s["budget"] == budget) & (re_s["compressor"] != "none")]
        if rows.empty:
            continue
        best = rows.sort_values("share_mean", ascending=False).iloc[0]
        target = targets.get(int(budget))
        verdict = "" if target is None else (f"; target {target:.0%}: "
                                             f"{'met' if best['share_mean'] >= target else 'NOT met'}")
        spread = f" ± {best['share_std']:.0%}" if best["seeds"] > 1 else " (1 seed)"
        line = (f"budget {budget} of {int(b0['budget'])}: best retrained `{best['compressor']}` keeps "
                f"{best['share_mean']:.0%}{spread} of the full-context return"
                f"{verdict}; decision {best['decision_ms']:.2f} ms vs {b0['decision_ms']:.2f} ms (cached full "
                f"context), peak {best['peak_mem_mb']:.2f} MB vs {b0['peak_mem_mb']:.2f} MB, attention FLOPs "
                f"x{best['attn_flops'] / b0['attn_flops']:.2f}, training step {best['train_step_ms']:.0f} ms vs "
                f"{b0['train_step_ms']:.0f} ms")
        if rec is not None:
            mine = rows[rows["compressor"] == rec]
            line += (f"; 03 recommends `{rec}`: " + (f"{mine['share_mean'].iloc[0]:.0%}"
                                                     + (" (the best)" if rec == best["compressor"] else "")
                                                     if len(mine) else "not in this study"))
        lines.append(line)
    return lines


def markdown_summary(df: pd.DataFrame) -> str:
    """:func:`summary` as a markdown table (mean ± std over seeds; FLOPs relative to the cached full context)."""
    from adkit.insights import markdown_table

    s = summary(df)
    base = s[(s["compressor"] == "none") & (s["mode"] == MODE)]
    ref = float(base["attn_flops"].iloc[0]) if len(base) else float("nan")
    pm = lambda m, sd, fmt: f"{m:{fmt}} ± {sd:{fmt}}"  # noqa: E731
    view = pd.DataFrame({
        "compressor": s["compressor"], "budget": s["budget"], "mode": s["mode"], "seeds": s["seeds"],
        "return": [pm(m, sd, ".2f") for m, sd in zip(s["return_mean"], s["return_std"])],
        "share of full": [pm(100 * m, 100 * sd, ".0f") + " %" for m, sd in zip(s["share_mean"], s["share_std"])],
        "train step ms": s["train_step_ms"], "train peak MB": s["train_peak_mem_mb"],
        "rollout step ms": s["rollout_step_ms"], "decision ms": s["decision_ms"], "peak MB": s["peak_mem_mb"],
        "attn FLOPs (x full)": s["attn_flops"] / ref,
    })
    return markdown_table(view)


def best_cell(df: pd.DataFrame) -> tuple[str, int]:
    """``(compressor, budget)`` of the retrained cell with the best mean share at the smallest budget."""
    s = summary(df)
    s = s[(s["mode"] == MODE) & (s["compressor"] != "none")]
    if s.empty:
        raise ValueError("no retrained compressed cell in the table yet")
    smallest = s[s["budget"] == s["budget"].min()]
    best = smallest.sort_values("share_mean", ascending=False).iloc[0]
    return str(best["compressor"]), int(best["budget"])


def write_outputs(df: pd.DataFrame, run_dir: str | Path, histories: str | Path | None = None) -> list[Path]:
    """Into ``RUN/study``: ``results.md`` (headline and table) and the figures: both modes against
    budget, the Pareto front, and the attention of the best compressed model (:func:`best_cell`,
    seed 0) against the full model's."""
    from adkit.io import write_text
    from adkit.plots import save_png
    from adkit.retrain_plots import attention_shift, plot_attention_shift, plot_modes, plot_pareto

    out = Path(run_dir) / "study"
    md = out / "results.md"
    lines = "\n".join(f"- {line}" for line in headline(df, run_dir))
    write_text(md, f"# Compression: retrained against training-free\n\n{lines}\n\n{markdown_summary(df)}\n\n"
                   "Share: return / full-context return of the same mode and seed (retrained: the `none` model "
                   "retrained with the same steps and seed; training-free: the run's model). Costs: one "
                   "decision of one stream per held-out task (decision ms, peak MB: tensor memory incl. the "
                   "key/value cache for `none`), per environment step of the rollout, a training step without "
                   "the update (batch, compression, forward, backward); attention FLOPs per decision relative "
                   "to the cached full context.\n")
    name, budget = best_cell(df)
    seed = int(df.loc[(df["compressor"] == name) & (df["mode"] == MODE), "seed"].min())
    figures = {"return_vs_budget_modes.png": lambda: plot_modes(df), "pareto.png": lambda: plot_pareto(df),
               "attention_compressed.png": lambda: plot_attention_shift(
                   attention_shift(run_dir, name, budget, seed, histories=histories))}
    return [md, *(save_png(plot(), out / filename) for filename, plot in figures.items())]


def compression_study(run_dir: str | Path, compressors: Sequence[str] | None = None,
                      budgets: Sequence[int] = (40, 20, 10), seeds: Sequence[int] = (0, 1, 2),
                      steps: int | None = None, episodes: int | None = None, workers: int = 1,
                      histories: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Both modes for the same cells: the training-free study (evaluation seeds ``seeds``), the
    retrained study, then ``RUN/study/results.csv``, ``results.md`` and the figures; returns the
    joined table. Resumable: finished cells of either mode are kept."""
    from adkit.study import training_free_study

    names = _check_names(compressors)
    training_free_study(run_dir, names, budgets, seeds, episodes, progress=progress)
    retrained_study(run_dir, names, budgets, seeds, steps, episodes, workers, histories, progress)
    df = results_table(run_dir)
    write_outputs(df, run_dir, histories)
    return df
