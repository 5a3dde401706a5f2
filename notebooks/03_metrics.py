# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Attention statistics and insights
#
# The original toolkit's metrics per layer, head and sample (same names), length-aware additions (normalised entropy, mean attention distance, mass per episode and on rewarded transitions, sink mass, rollout, per-head profiles), a check the original never made (does dropping the most-attended transitions move the decision more than dropping random ones?), and the original insight report with a recommended compressor per layer. Writes `RUN/attention/insights.md` and `insights.json`.
#
# Needs the attention file of 02_extract_attention.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
profile = "quick"        # built-in profile: tiny, quick, demo, paper, ... (or a YAML path)
run_dir = None           # default: runs/<profile> under the project, wherever the kernel runs
overrides = []           # config changes as adkit --set takes them: section.field, an equals sign, the value
source = "windows"       # which contexts of the attention file: windows or rollout
layer = None             # layer shown; None: the last
head = -1                # head shown; -1: heads averaged
sample = 0               # window (or rollout trajectory) shown
decision = 0             # index of the decision step shown along a rollout trajectory
interactive = True       # widgets (JupyterLab); headless runs (papermill, demo, tests) pass False

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from adkit.analysis.figures import (
    explorer,
    plot_ablation,
    plot_budget_coverage,
    plot_episode_mass,
    plot_rollout,
    plot_stat_grid,
    plot_summary,
    save_figures,
)
from adkit.analysis.insights import analyze_run, coverage_table
from adkit.analysis.metrics import stats_table
from adkit.notebook import setup

run = setup(profile, run_dir, overrides)  # a missing upstream stage names the notebook that makes it

# %%
insights = analyze_run(run, source)  # sized by the profile's attention section
record, stats = insights.record, insights.stats
layer = record.layers[-1] if layer is None else layer
print(f"{record.n_samples} {source} contexts of {record.seq_len} tokens")

# %% [markdown]
# ## Per layer, head and sample
# One row per (layer, sample, head); averaged over samples here.

# %%
table = pd.DataFrame(stats_table(record.patterns))
display(table.groupby(["layer", "head"]).mean(numeric_only=True).drop(columns="sample").round(3))
plot_stat_grid(record)
plt.show()

# %%
plot_summary(stats[layer], layer)
plt.show()

# %% [markdown]
# ## Where the attention goes: episodes in context and across layers

# %%
plot_episode_mass(record)
plt.show()

# %%
plot_rollout(record, sample)
plt.show()

# %%
box, draw = explorer(record, layer, head, sample, decision)
display(box if interactive else draw())

# %% [markdown]
# ## Does attention predict importance?
# Drop the most-attended transitions vs as many random ones and measure how far the decision's action distribution moves; rank-correlate attention with leave-one-out importance.

# %%
plot_ablation(insights.ablation)
plt.show()
display(insights.ablation.table())
print(insights.ablation.verdict)

# %%
paths = save_figures(record, run.figs, insights.ablation, samples=run.cfg.attention.figure_samples,
                     coverage=insights.coverage)
print(f"{len(paths)} figures under {run.figs / 'attention'}")

# %% [markdown]
# ## Insight report and recommended compressors
# The original console report per layer, then one compressor per layer with the numbers behind it.

# %%
print(insights.report)

# %%
display(insights.table())

# %% [markdown]
# ## What a budget keeps of the attention
# At each of the study's budgets K: the share of the query's attention, and of its mass on the task's information (rewards; on Key-to-Door the key and the door), that K kept transitions hold, kept as the last K (recency), as each query's K most attended (what re-encoding by attention keeps) or at random. A recommended budget holds its mass target; below it, this shows what each rule loses.

# %%
plot_budget_coverage(insights.coverage)
plt.show()
display(coverage_table(insights.coverage))
