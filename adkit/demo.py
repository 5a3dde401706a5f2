"""``adkit demo`` / ``make demo``: the five notebooks headless, then a one-page report."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from adkit.config import load_config
from adkit.io import write_text
from adkit.pipeline import run_dir_for

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_train", "02_extract_attention", "03_metrics", "04_compressors", "05_retrain_eval")
# the demo's compression sweeps, sized for minutes: training-free, every strategy but the (slow) oracle
# at every budget, one seed and 20 episodes; retrained, the attention-recommended `uniform`, the random
# baseline, sink + recent and attention top-K at 20 and 10 of 80 kept, one seed, the run's training steps,
# two cells at a time. `adkit study --run-dir RUN` runs the full study.
DEMO_PARAMS = {
    "01_train": {"more_seeds": [1, 2]},
    "04_compressors": {"episodes": 20, "seeds": 1, "compressors": [
        "recency", "uniform", "attention", "threshold", "adaptive", "exponential", "sink-recent", "h2o", "snapkv",
        "reward-recent", "best-episode", "profile", "random"]},
    "05_retrain_eval": {"episodes": 20, "seeds": 1, "workers": 2, "budgets": [20, 10],
                        "compressors": ["uniform", "random", "sink-recent", "attention"]},
}


def execute(name: str, run: Path, params: dict, timeout: int = 1800) -> Path:
    """Run one notebook through papermill; the executed copy goes to ``run/notebooks``."""
    import papermill as pm

    out = run / "notebooks" / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=params,
                        cwd=str(ROOT), kernel_name="python3", execution_timeout=timeout, progress_bar=False)
    return out


def report(run: Path, figs: Path, timings: dict[str, float]) -> Path:
    """``figs/REPORT.md``, one page: the headline numbers, the in-context curve, the attention
    recommendations with the check of them, and the compression table, linking the figures
    (copied next to it) and the full reports of the run."""
    import json

    import pandas as pd

    from adkit.insights import markdown_table
    from adkit.retrain import RESULTS, headline, read_table

    figs.mkdir(parents=True, exist_ok=True)
    head, body = [], []
    curve = run / "eval" / "returns.png"
    if curve.exists():
        shutil.copy(curve, figs / "incontext_returns.png")
        per_ep = pd.read_csv(run / "eval" / "returns.csv").groupby("episode")[["return", "optimal"]].mean()
        first, last = per_ep.iloc[0], per_ep.tail(10).mean()
        head.append(f"in context on held-out tasks: first episode {first['return']:.2f} "
                    f"({first['return'] / first['optimal']:.0%} of optimal), last 10 episodes "
                    f"{last['return']:.2f} of {last['optimal']:.2f} ({last['return'] / last['optimal']:.0%})")
        body += ["## In-context learning on held-out tasks", "", "![in-context return](incontext_returns.png)", ""]
    seeds = run / "eval" / "seeds.csv"
    if seeds.exists():
        table = pd.read_csv(seeds, index_col=0)
        mean, std = table.loc["mean"], table.loc["std"]
        head.append(f"over {len(table) - 2} training seeds: first episode {mean['first_share']:.0%} +- "
                    f"{std['first_share']:.0%} of optimal, last 10 episodes {mean['last_share']:.0%} +- "
                    f"{std['last_share']:.0%}")
        shutil.copy(run / "eval" / "returns_seeds.png", figs / "incontext_seeds.png")
        body += ["![in-context return over training seeds](incontext_seeds.png)", ""]
    insights = run / "attention" / "insights.json"
    if insights.exists():
        data = json.loads(insights.read_text())
        shutil.copy(run / "attention" / "insights.md", figs / "insights.md")
        recs = pd.DataFrame([{"layer": x["layer"], "recommended": f"`{x['name']}`", "keep": x["budget"],
                              "rule": x["rule"]} for x in data["layers"]])
        head.append("attention recommends " + ", ".join(f"layer {x['layer']}: `{x['name']}`" for x in data["layers"]))
        verdict = (data.get("ablation") or {}).get("verdict")
        body += ["## What the model attends to", "", markdown_table(recs), ""]
        body += [f"Check of the advice: {verdict}", ""] if verdict else []
        body += ["Full report: [insights.md](insights.md).", ""]
    results = run / "study" / RESULTS
    if results.exists():
        head += headline(read_table(results), run)
        shutil.copy(run / "study" / "results.md", figs / "results.md")
        body += ["## Compression: retrained against training-free", "",
                 "Table: [results.md](results.md); training-free, every strategy: "
                 "[training_free.md](training_free.md).", ""]
    if (run / "study" / "training_free.md").exists():
        shutil.copy(run / "study" / "training_free.md", figs / "training_free.md")
    for png in sorted((run / "study").glob("*.png")):
        shutil.copy(png, figs / png.name)
        body += [f"![{png.stem}]({png.name})", ""]
    lines = [f"# adkit report: {run}", "", *(f"- {h}" for h in head), "", *body]
    lines += ["## Notebooks", "", "| notebook | seconds | executed copy |", "|---|---|---|"]
    lines += [f"| {n} | {s:.0f} | `{run / 'notebooks' / (n + '.ipynb')}` |" for n, s in timings.items()]
    path = figs / "REPORT.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def run_demo(profile: str = "quick", run_dir: str | None = None) -> int:
    cfg = load_config(profile)
    run = run_dir_for(cfg, run_dir)
    timings = {}
    for name in NOTEBOOKS:
        t0 = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        execute(name, run, {"profile": profile, "run_dir": str(run), **DEMO_PARAMS.get(name, {})})
        timings[name] = time.perf_counter() - t0
        print(f"[demo] {name} done in {timings[name]:.0f} s", flush=True)
    path = report(run, ROOT / "figs", timings)
    print(f"[demo] report: {path}")
    return 0
