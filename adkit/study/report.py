"""The one-page report of a run (``figs/REPORT.md``): headline numbers, figures, and links to the full tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from adkit.analysis.insights import markdown_table
from adkit.io import write_text
from adkit.run import Run
from adkit.study.cells import read_table
from adkit.study.retrained import COLUMNS, RESULTS, headline


def report(run: Run, figs: Path, timings: dict[str, float]) -> Path:
    """``figs/REPORT.md``, one page: the headline numbers, the in-context curve, the attention
    recommendations with the check of them, and the compression table, linking the figures
    (copied next to it) and the full reports of the run."""
    figs.mkdir(parents=True, exist_ok=True)
    head, body = [], []
    curve = run.returns_figure
    if curve.exists():
        shutil.copy(curve, figs / "incontext_returns.png")
        per_ep = pd.read_csv(run.returns).groupby("episode")[["return", "optimal"]].mean()
        first, last = per_ep.iloc[0], per_ep.tail(10).mean()
        head.append(f"in context on held-out tasks: first episode {first['return']:.2f} "
                    f"({first['return'] / first['optimal']:.0%} of optimal), last 10 episodes "
                    f"{last['return']:.2f} of {last['optimal']:.2f} ({last['return'] / last['optimal']:.0%})")
        body += ["## In-context learning on held-out tasks", "", "![in-context return](incontext_returns.png)", ""]
    seeds = run.seeds_table
    if seeds.exists():
        table = pd.read_csv(seeds, index_col=0)
        mean, std = table.loc["mean"], table.loc["std"]
        head.append(f"over {len(table) - 2} training seeds: first episode {mean['first_share']:.0%} +- "
                    f"{std['first_share']:.0%} of optimal, last 10 episodes {mean['last_share']:.0%} +- "
                    f"{std['last_share']:.0%}")
        shutil.copy(run.seeds_figure, figs / "incontext_seeds.png")
        body += ["![in-context return over training seeds](incontext_seeds.png)", ""]
    insights = run.insights
    if insights.exists():
        data = json.loads(insights.read_text())
        shutil.copy(run.insights.with_suffix(".md"), figs / "insights.md")
        recs = pd.DataFrame([{"layer": x["layer"], "recommended": f"`{x['name']}`", "keep": x["budget"],
                              "rule": x["rule"]} for x in data["layers"]])
        head.append("attention recommends " + ", ".join(f"layer {x['layer']}: `{x['name']}`" for x in data["layers"]))
        verdict = (data.get("ablation") or {}).get("verdict")
        body += ["## What the model attends to", "", markdown_table(recs), ""]
        body += [f"Check of the advice: {verdict}", ""] if verdict else []
        body += ["Full report: [insights.md](insights.md).", ""]
    results = run.study / RESULTS
    if results.exists():
        head += headline(read_table(results, COLUMNS), run)
        shutil.copy(run.study / "results.md", figs / "results.md")
        body += ["## Compression: retrained against training-free", "",
                 "Table: [results.md](results.md); training-free, every strategy: "
                 "[training_free.md](training_free.md).", ""]
    if (run.study / "training_free.md").exists():
        shutil.copy(run.study / "training_free.md", figs / "training_free.md")
    for png in sorted(run.study.glob("*.png")):
        shutil.copy(png, figs / png.name)
        body += [f"![{png.stem}]({png.name})", ""]
    lines = [f"# adkit report: {run.dir}", "", *(f"- {h}" for h in head), "", *body]
    lines += ["## Notebooks", "", "| notebook | seconds | executed copy |", "|---|---|---|"]
    lines += [f"| {n} | {s:.0f} | `{run.notebooks / (n + '.ipynb')}` |" for n, s in timings.items()]
    path = figs / "REPORT.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
