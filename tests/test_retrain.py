"""Retraining on compressed windows: the training path, the study table, resuming and interruption."""


import pandas as pd
import pytest
import torch

from adkit import retrain
from adkit.compress import make
from adkit.config import load_config
from adkit.context import compress_tokens, compress_window
from adkit.histories import save as save_histories
from adkit.model import load
from adkit.train import Trainer, split_batch, train

BUDGETS = (6, 3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_cfg, tiny_hist):
    """A tiny run: histories on disk, a briefly trained full-context model and its config."""
    root = tmp_path_factory.mktemp("retrain")
    hist = save_histories(tiny_hist, root / "h.h5")
    cfg = load_config("tiny", {"train": {"steps": 6}, "eval": {"seeds": 1}})
    run = train(cfg, tiny_hist, root / "run", progress=False)
    return run, hist


@pytest.fixture(scope="module")
def table(run_dir):
    run, hist = run_dir
    return retrain.retrained_study(run, ["recency", "attention"], budgets=BUDGETS, seeds=(0,), steps=4,
                                   episodes=2, histories=hist, progress=False)


def test_a_compressed_training_window_keeps_each_kept_tokens_own_target(tiny_cfg, tiny_hist):
    cfg = tiny_cfg
    from adkit.train import samplers

    inputs, targets = split_batch(samplers(cfg, tiny_hist)[0].sample(5))
    inputs = {k: v[:, :cfg.model.n_transit] for k, v in inputs.items()}  # one decision's context
    targets = targets[:, :cfg.model.n_transit]
    c = make("random", 4)
    out, kept_targets = compress_window(c, inputs, targets, "original", generator=torch.Generator().manual_seed(1))
    same = compress_tokens(c, inputs, "original", generator=torch.Generator().manual_seed(1))
    for k in same:
        assert torch.equal(out[k], same[k]), k  # the rollout's selection, exactly
    assert kept_targets.shape == (5, 5)
    idx = out["positions"] - inputs["positions"][:, :1]  # (B, K + 1) offsets in the window
    assert torch.equal(kept_targets, targets.gather(1, idx))
    assert (idx[:, -1] == cfg.model.n_transit - 1).all()  # the decision's own token is always kept


def test_trainer_trains_on_windows_of_budget_plus_one_tokens(tmp_path, tiny_hist):
    cfg = load_config("tiny", {"train": {"compressor": "recency", "budget": 5, "steps": 3}})
    trainer = Trainer(cfg, tiny_hist, tmp_path / "run", progress=False)
    inputs, targets = trainer.batch(trainer.train_sampler)
    assert inputs["actions"].shape == (cfg.train.batch_size, 6) and targets.shape == (cfg.train.batch_size, 6)
    steps = inputs["positions"]
    assert (steps[:, 1:] - steps[:, :-1] == 1).all()  # recency keeps the most recent, consecutive
    more = load_config("tiny", {"train": {"compressor": "recency", "budget": 5, "compressed_batch": 13}})
    trainer = Trainer(more, tiny_hist, tmp_path / "more", progress=False)
    assert trainer.batch(trainer.train_sampler)[1].shape == (13, 6)  # windows per step, when set


@pytest.mark.parametrize("train_cfg, message", [
    ({"compressor": "attention", "budget": 5}, "scores transitions by attention: pass scorer="),
    ({"compressor": "recency", "budget": 0}, r"train.budget must be 1..19"),
    ({"compressor": "recency", "budget": 20}, r"train.budget must be 1..19"),
    ({"compressor": "oracle", "budget": 5}, "cannot compress training windows"),
])
def test_trainer_refuses_bad_compression_settings(tmp_path, tiny_hist, train_cfg, message):
    with pytest.raises(ValueError, match=message):
        Trainer(load_config("tiny", {"train": train_cfg}), tiny_hist, tmp_path / "run", progress=False)


def test_compressed_training_resumes_exactly(tmp_path, tiny_hist):
    cfg = load_config("tiny", {"train": {"compressor": "random", "budget": 5, "steps": 8, "val_every": 4}})
    whole = train(cfg, tiny_hist, tmp_path / "whole", progress=False)
    train(cfg, tiny_hist, tmp_path / "parts", progress=False, until=4)
    parts = train(cfg, tiny_hist, tmp_path / "parts", progress=False)  # the random selections continue too
    a, b = load(whole).state_dict(), load(parts).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_study_table_has_every_cell_and_column_and_no_empty_value(run_dir, table):
    run, _ = run_dir
    assert list(table.columns) == retrain.COLUMNS
    cells = set(zip(table["compressor"], table["budget"], table["seed"]))
    assert cells == {("none", 20, 0)} | {(c, b, 0) for c in ("recency", "attention") for b in BUDGETS}
    assert not table.isna().any().any()
    assert (table["mode"] == "retrained").all() and (table["train_steps"] == 4).all()
    assert (table["full_return"] == table.loc[table["compressor"] == "none", "return"].iloc[0]).all()
    assert set(table.loc[table["compressor"] != "none", "context_tokens"]) == {b + 1 for b in BUDGETS}
    per_episode = pd.read_csv(retrain.cell_dir(run, "recency", 3, 0) / "returns.csv")
    assert len(per_episode) == 2 * len(per_episode["task"].unique())  # 2 episodes x 1 stream per task


def test_a_resumed_study_recomputes_nothing(run_dir, table, monkeypatch):
    run, hist = run_dir
    monkeypatch.setattr(retrain, "run_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    again = retrain.retrained_study(run, ["recency", "attention"], budgets=BUDGETS, seeds=(0,), steps=4,
                                    episodes=2, histories=hist, progress=False)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="made with 4 training steps"):
        retrain.retrained_study(run, ["recency"], budgets=BUDGETS, seeds=(0,), steps=5, episodes=2,
                                histories=hist, progress=False)


def test_an_interrupted_study_keeps_every_finished_cell(tmp_path, run_dir, monkeypatch):
    run, hist = run_dir
    fresh = tmp_path / "run"
    fresh.mkdir()
    for name in ("model.safetensors", "model.json", "config.yaml"):
        (fresh / name).write_bytes((run / name).read_bytes())
    real, calls = retrain.run_cell, []

    def crash_on_third(*args, **kw):
        calls.append(args[1:4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(retrain, "run_cell", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        retrain.retrained_study(fresh, ["random"], budgets=BUDGETS, seeds=(0,), steps=2, episodes=2,
                                histories=hist, progress=False)
    kept = pd.read_csv(fresh / "study" / retrain.TABLE)
    assert set(zip(kept["compressor"], kept["budget"])) == {("none", 20), ("random", 6)}


def test_results_join_both_modes_and_count_attention_work(run_dir, table):
    from adkit.study import training_free_study

    run, hist = run_dir
    training_free_study(run, ["recency", "attention"], budgets=BUDGETS, seeds=(0,), episodes=2, decisions=2,
                        progress=False)
    both = retrain.results_table(run)
    assert set(both["mode"]) == {"retrained", "training-free"}
    assert not both[retrain.COLUMNS].isna().any().any()
    tf = both[both["mode"] == "training-free"]
    assert {"full", "none"} & set(tf["compressor"]) == {"none"}  # the re-encoded baseline is not a study cell
    cfg = load(run).cfg
    flops = lambda pairs: 4 * cfg.tf_n_embd * cfg.tf_n_layer * pairs  # noqa: E731
    row = both[(both["compressor"] == "recency") & (both["budget"] == 3)].iloc[0]
    assert row["attn_flops"] == flops(4 * 5 // 2)  # 4 kept tokens re-encoded: 10 causal pairs
    row = both[(both["compressor"] == "attention") & (both["budget"] == 3)].iloc[0]
    n = cfg.n_transit
    assert row["attn_flops"] == flops(10 + n * (n + 1) // 2)  # plus the scoring pass over the full window
    md = retrain.markdown_summary(both)
    assert "| compressor | budget | mode |" in md and "training-free" in md
    assert any(line.startswith("budget 6 of 20: best retrained") for line in retrain.headline(both, run))
    name, budget = retrain.best_cell(both)
    assert budget == 3 and name in ("recency", "attention")
    paths = retrain.write_outputs(both, run, hist)
    assert [p.name for p in paths] == ["results.md", "return_vs_budget_modes.png", "pareto.png",
                                       "attention_compressed.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_study_arguments_are_checked(run_dir):
    run, hist = run_dir
    with pytest.raises(ValueError, match="cannot retrain with \\['oracle'\\]"):
        retrain.retrained_study(run, ["oracle"], histories=hist, progress=False)
    with pytest.raises(ValueError, match="budgets must be transitions kept in 1..19"):
        retrain.retrained_study(run, ["recency"], budgets=(40,), histories=hist, progress=False)


def test_curve_explorer_redraws_the_chosen_cell(run_dir, table):
    from adkit.retrain_plots import curve_explorer, episode_curves

    run, _ = run_dir
    curves = episode_curves(run, table)
    assert set(curves) == {("none", 20)} | {(c, b) for c in ("recency", "attention") for b in BUDGETS}
    assert curves["recency", 3].shape == (1, 2)  # (seeds, episodes)
    box, draw = curve_explorer(curves, optimal=1.0, name="recency", budget=3)
    assert draw.figure.axes[0].get_title().startswith("recency @ 3")
    draw.widgets["name"].value = "attention"
    draw.widgets["budget"].value = 6
    assert draw.figure.axes[0].get_title().startswith("attention @ 6")
