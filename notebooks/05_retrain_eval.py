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
# # 05 · Retrain with compressed history: what compression buys and what it costs
#
# The original toolkit's promise: pick the compressor that matches the attention pattern, retrain with a shorter context, keep 95%+ of the return and save compute and memory. Here it is measured. For every compressor x budget x seed the AD model of 01_train is **trained again from scratch on compressed windows** (same steps, batch and seed as a full-context model retrained alongside it, the `none` baseline; a compressed window of K + 1 tokens carries K + 1 action targets where a full-context sequence carries 2 x `n_transit`, so at equal batches the compressed models see fewer targets per step: `compress.batch` and `benchmarks/bench_retrain.py` measure that effect) and evaluated in context on the held-out tasks with its context compressed the same way at every decision. Each cell is set beside the **training-free** number (the unchanged model of 01, compressed at evaluation only, as in 04), and every cost is measured: training step, rollout step, one decision, peak memory, and the FLOPs of a whole decision counted from the token counts.
#
# With `study.init=run` in `overrides` every cell (the `none` baseline too) instead starts from the model of 01_train and is fine-tuned for `study.steps` steps (`adkit study --init run`), a fraction of the cost. Same as `adkit study --run-dir RUN` (writes `RUN/study/results.csv`, `results.md` and the figures). Resumable: finished cells are never recomputed, an interrupted cell's training resumes from its checkpoint; `study.workers > 1` runs cells in parallel processes; the profile's `study` section sizes the sweep.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
profile = "quick"        # built-in profile: tiny, quick, demo, paper, ... (or a YAML path)
run_dir = None           # default: runs/<profile> under the project, wherever the kernel runs
overrides = []           # config changes as adkit --set takes them: section.field, an equals sign, the value
strategy = None          # compressor for the attention comparison and the curves; None: the best at the smallest budget
interactive = True       # widgets (JupyterLab); headless runs (papermill, demo, tests) pass False

# %%
from IPython.display import Image, Markdown, display

from adkit.notebook import setup
from adkit.study.figures import curve_explorer, plot_attention_shift
from adkit.study.retrained import (
    RESULTS,
    attention_shift,
    best_cell,
    compression_study,
    episode_curves,
    headline,
    markdown_summary,
)
from adkit.study.summaries import summary

run = setup(profile, run_dir, overrides)  # a missing upstream stage names the notebook that makes it

# %% [markdown]
# ## The study
# One row per compressor x budget x mode, mean ± std over seeds. `share of full`: return over the full-context return of the same mode and seed. Costs: `train step ms` / `train peak MB` for a training step without the update (batch, compression with any scoring pass, forward, backward); `rollout step ms` per environment step of the evaluation; `decision ms` / `peak MB` for one steady-state decision of one stream per held-out task (tensor memory, key/value cache included for `none`); FLOPs per decision (projections, attention, MLP, head) relative to the rolling cache of the full context.

# %%
df = compression_study(run)
display(Markdown(markdown_summary(df)))
for line in headline(df, run):
    print(line)
cells = summary(df)
print(f"{len(df)} rows in {run.study / RESULTS}; modes {sorted(df['mode'].unique())}; "
      f"{cells['compressor'].nunique()} compressors x budgets "
      f"{sorted(int(b) for b in cells.loc[cells['compressor'] != 'none', 'budget'].unique())}")

# %% [markdown]
# ## Both modes against budget, and return against cost
# Left figure: solid lines retrained, dashed lines training-free, the two full-context returns as horizontal lines. Right figure: every cell's return against its measured decision time and its attention FLOPs; the line is the Pareto front of the retrained cells. A compressed decision re-encodes its kept tokens (and, for attention-based strategies, first scores the whole window), while the full context only appends one token to a rolling key/value cache: fewer tokens do not always mean less time.

# %%
display(Image(str(run.study / "return_vs_budget_modes.png")))
display(Image(str(run.study / "pareto.png")))

# %% [markdown]
# ## Attention after compression
# The original toolkit's "re-visualise after compression": where the decision's attention goes, by how far back a transition lies, for the full model on full training windows and for the retrained model on the same windows compressed as it was trained (per layer, heads averaged). Shown for the best strategy at the smallest budget (`RUN/study/attention_compressed.png`), or for the `strategy` parameter.

# %%
if strategy:
    name = strategy
    budget = int(df.loc[(df["compressor"] == strategy) & (df["mode"] == "retrained"), "budget"].min())
    display(plot_attention_shift(attention_shift(run, name, budget)))
else:
    name, budget, kv = best_cell(df)
    name = f"{name} evict" if kv == "evict" else name  # how the per-episode curves name it
    display(Image(str(run.study / "attention_compressed.png")))

# %% [markdown]
# ## Per-episode curves
# The in-context learning curve of one retrained compressor and budget against the retrained full-context model (mean ± std over training seeds).

# %%
curves = episode_curves(run, df)
box, draw = curve_explorer(curves, float(df["optimal"].mean()), name, budget)  # widgets + the draw function
display(box if interactive else draw())
