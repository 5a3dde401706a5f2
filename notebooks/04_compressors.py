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
# # 04 · History compressors: what each keeps, and what it costs without retraining
#
# Every strategy of `adkit.compress` keeps K of the `n_transit - 1` earlier transitions of a decision's context (the decision's own token is always kept). First, on a real context of the run: which transitions each strategy keeps, drawn over that context's attention (layers and heads averaged: what the attention-based strategies score with). Then the **training-free study**: the full-context model of 01_train, unchanged, with its context compressed at every decision, against the full context (`none`: the rolling cache) and DICP's hard context (`full`: the last `n_transit` re-encoded every step), a random subset and a greedy leave-one-out oracle, at several budgets: held-out return, agreement and KL with the full-context policy, time per step and peak memory. Each compressed context is kept two ways (`kv`): re-encoded at every decision, or as an evicting key/value cache of K entries that costs O(K) per decision.
#
# Same as `adkit study --run-dir RUN --mode training-free` (writes `RUN/study/`), sized by the profile's `study` section. Needs the checkpoint of 01_train; uses the attention file of 02 for the example context when there is one. The study resumes: finished cells in `RUN/study/training_free.csv` are not recomputed.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
profile = "quick"        # built-in profile: tiny, quick, demo, paper, ... (or a YAML path)
run_dir = None           # default: runs/<profile> under the project, wherever the kernel runs
overrides = []           # config changes as adkit --set takes them: section.field, an equals sign, the value
seed = 0                 # seed of the example context's rollout (when 02 made no attention file)
strategy = "h2o"         # strategy drawn on the heatmap
budget = None            # transitions kept in the figure; None: n_transit // 4
kv = ["reencode", "evict"]  # how compressed contexts are kept: re-encoded every decision and/or an evicting cache
interactive = True       # widgets (JupyterLab); headless runs (papermill, demo, tests) pass False

# %%
from IPython.display import Image, Markdown, display

from adkit.model.checkpoint import load
from adkit.notebook import setup
from adkit.study.figures import keep_explorer
from adkit.study.keeps import example_context, keep_view
from adkit.study.training_free import describe, markdown_summary, training_free_study, write_outputs

run = setup(profile, run_dir, overrides)  # a missing upstream stage names the notebook that makes it
model = load(run.weights)
n = run.cfg.model.n_transit

# %% [markdown]
# ## The strategies
# One line each, from the classes' own documentation; `needs attention`: scored with the decision's attention pattern (one extra full-window pass per decision).

# %%
display(describe())

# %% [markdown]
# ## What each strategy keeps, on a real context
# Left: the context's attention (query rows x key transitions), the transitions that the chosen strategy drops greyed out; green marks are rewarded transitions. Right: what every strategy keeps at the same budget (one row each, the chosen one framed), over the query row's attention.

# %%
tokens = example_context(run, model, seed)  # (1, n_transit, ·)
view = keep_view(model, run.cfg.env.name, tokens)
box, draw = keep_explorer(view, strategy, budget or n // 4)  # widgets + the draw function they call
display(box if interactive else draw())

# %% [markdown]
# ## Training-free study
# One row per compressor x budget x kv x seed. `share`: return over the full-context return on the same tasks and episodes; `agreement` / `KL`: the compressed-context policy against the full-context one on contexts recorded from the full-context rollouts; `decision ms` and `peak MB`: one steady-state decision for all streams (peak of tensor allocations, torch.profiler). The oracle runs on a reduced protocol, shown in its row.

# %%
df = training_free_study(run, kvs=kv)
md, png, cost = write_outputs(df, run.study)
display(Image(str(png)))
display(Markdown(markdown_summary(df)))
print(f"wrote {run.study / 'training_free.csv'}, {md} and {png}")

# %% [markdown]
# ## What it buys: return against decision time and memory
# Circles re-encode the kept transitions at every decision, triangles keep an evicting cache; stars are the full context (rolling cache) and DICP's hard context. The step line is the Pareto front: no point beats it on both cost and return.

# %%
display(Image(str(cost)))
