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
# # 02 · Extract attention
#
# Every layer and head of the trained model in one forward pass through the hook points (`blocks.{l}.attn.hook_pattern`), on two kinds of context:
#
# * **windows**: training-style windows of `n_transit` transitions from the train tasks' histories;
# * **rollouts**: the model's own in-context rollouts on held-out tasks, recorded at chosen decision steps, to watch attention change from exploration to exploitation along one trajectory.
#
# Both go to `RUN/attention/attention.h5` (same as `adkit attention --run-dir RUN [--source rollout]`; sized by the profile's `attention` section). Sliders redraw from that file and never re-run the model. Needs the checkpoint of 01_train.

# %% tags=["parameters"]
# Parameters (papermill overrides these)
profile = "quick"        # built-in profile: tiny, quick, demo, paper, ... (or a YAML path)
run_dir = None           # default: runs/<profile> under the project, wherever the kernel runs
overrides = []           # config changes as adkit --set takes them: section.field, an equals sign, the value
layer = None             # layer shown; None: the last
head = -1                # head shown; -1: heads averaged
sample = 0               # window (or rollout trajectory) shown
decision = 0             # index of the decision step shown along a rollout trajectory
interactive = True       # widgets (JupyterLab); headless runs (papermill, demo, tests) pass False

# %%
import matplotlib.pyplot as plt
from IPython.display import display

from adkit.analysis.attention import extract_run
from adkit.analysis.figures import explorer, plot_trajectory, save_original_set
from adkit.notebook import setup

run = setup(profile, run_dir, overrides)  # a missing upstream stage names the notebook that makes it

# %% [markdown]
# ## Training-style windows
# One pass over all contexts; `patterns` is `(layer, sample, head, query, key)` with per-token metadata beside it.

# %%
windows = extract_run(run, "windows")
layer = windows.layers[-1] if layer is None else layer
print(f"{windows.n_samples} windows of {windows.seq_len} tokens -> patterns {windows.patterns.shape}")
print({k: v[sample].tolist() for k, v in windows.tokens.items() if k in ("positions", "episode", "step")})

# %%
# NBVAL_IGNORE_OUTPUT
box, draw = explorer(windows, layer, head, sample)  # sliders + the draw function they call
display(box if interactive else draw())

# %% [markdown]
# ## The model's own rollouts: from exploration to exploitation
# The context of decision *t* is the last `n_transit` transitions before it. Each row below is one decision of one trajectory; green dots are rewarded transitions.

# %%
rollouts = extract_run(run, "rollout")
trajectory = min(sample, rollouts.n_trajectories - 1)
print(f"{rollouts.n_trajectories} trajectories at decision steps "
      f"{sorted(set(rollouts.samples['decision'].tolist()))}")
plot_trajectory(rollouts, trajectory, layer, None if head < 0 else head)
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
box_rollout, draw_rollout = explorer(rollouts, layer, head, trajectory, decision)
display(box_rollout if interactive else draw_rollout())

# %% [markdown]
# ## The original figure set
# Same file names as the original toolkit, under `<figs_root>/attention/layer_{l}/`, `attention.figure_samples` samples per layer.

# %%
paths = save_original_set(windows, run.figs, run.cfg.attention.figure_samples)
print(f"{len(paths)} figures under {run.figs / 'attention'}")
