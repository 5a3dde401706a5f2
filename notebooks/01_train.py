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
# # 01 · Train Algorithm Distillation and watch it learn in context
#
# Collect (or load) the source algorithm's learning histories, train the AD transformer on the train tasks, then let it reinforcement-learn **in context** on held-out tasks it never saw, against the source, a random policy and the optimum. Everything here is `adkit` code, sized by the profile (`train.extra_seeds` trains more seeds); the CLI does the same with `adkit collect`, `adkit train` and `adkit evaluate`.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
profile = "quick"        # built-in profile: tiny, quick, demo, paper, ... (or a YAML path)
run_dir = None           # default: runs/<profile> under the project, wherever the kernel runs
overrides = []           # config changes as adkit --set takes them: section.field, an equals sign, the value
interactive = True       # widgets (JupyterLab); headless runs (papermill, demo, tests) pass False

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from adkit import envs
from adkit.data.collect import ensure_histories
from adkit.model.checkpoint import load
from adkit.model.evaluate import evaluate_run, summary
from adkit.model.seeds import seed_curves, train_seeds
from adkit.model.train import train
from adkit.notebook import setup
from adkit.plots import plot_curves, plot_source, plot_train_log, save_png, task_explorer

run = setup(profile, run_dir, overrides, new=True)

# %% [markdown]
# ## Learning histories
# The source's mean return per episode over its history: the data must contain learning.

# %%
h, hist_path = ensure_histories(run.cfg)
random = envs.random_return_mean(run.cfg.env.name, run.test_tasks)
optimal = sum(envs.optimal_return(run.cfg.env.name, t) for t in run.test_tasks) / len(run.test_tasks)
source = h.task_returns(run.test_tasks)  # (held-out tasks x streams, episodes)
stride = run.cfg.train.episode_stride  # AD trains on every k-th episode of each stream
plot_source(h, run.test_tasks, stride, random, title=f"source histories: {hist_path.name}", optimal=optimal)
plt.show()

# %% [markdown]
# ## Train
# An action target at every position; a live progress bar; the log is `train_log.csv`.

# %%
train(run, h)
plot_train_log(pd.read_csv(run.train_log))
plt.show()

# %% [markdown]
# ## In-context evaluation on held-out tasks
# Sampled actions, rolling key/value cache, all tasks x seeds batched.

# %%
res = evaluate_run(run, load(run.weights))  # held-out tasks x eval.seeds; writes eval/returns.csv
fig = plot_curves(res, source=source, random=random, stride=stride,
                  title=f"{run.cfg.env.name}: in-context return on {len(run.test_tasks)} held-out tasks")
display(fig)
save_png(fig, run.returns_figure)
s = summary(res)
print(f"first episode {s['first_share']:.0%} of optimal; last 10 episodes {s['last_share']:.0%} of optimal")

# %% [markdown]
# ## Several training seeds
# One training run is one draw. With `train.extra_seeds` (an override or the profile's), the same recipe is trained with each seed (into `<run_dir>/seeds/`), and the curve and the table (`eval/seeds.csv`) show mean and spread over all of them.

# %%
if run.cfg.train.extra_seeds:
    results, table = train_seeds(run, h, res)  # writes eval/seeds.csv: one row per seed, mean, sample std
    fig = plot_curves(res, source=source, random=random, stride=stride, label=None,
                      extra={f"AD, mean +- std over {len(results)} training seeds": seed_curves(results)},
                      title=f"{run.cfg.env.name}: in-context return, training seeds {sorted(results)}")
    display(fig)
    save_png(fig, run.seeds_figure)
    print(table[["first_share", "last_share", "episodes_to_80pct", "first_reward_median"]].round(2))

# %% [markdown]
# ## Per task
# Each held-out task's curve, one line per evaluation seed.

# %%
box, draw = task_explorer(res)
display(box if interactive else draw())
