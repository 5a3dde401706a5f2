"""Retraining on compressed windows: the training path, the study table, resuming and interruption."""

import dataclasses

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adkit.compress import RULES, make
from adkit.compress.context import compress_tokens, compress_window, query_attention, scoring_rows
from adkit.compress.cost import scoring_flops
from adkit.config import load_config
from adkit.data.collect import load_for
from adkit.data.histories import save as save_histories
from adkit.data.tokens import STEP_INPUTS, Tokens
from adkit.model import ADTransformer, load
from adkit.model.train import Trainer, samplers, train
from adkit.run import Run
from adkit.study import retrained
from adkit.study.summaries import upgrade_table
from adkit.study.training_free import profile_note, profile_rule, training_free_study

BUDGETS = (6, 3)
STUDY = {"retrain_compressors": ["recency", "attention"], "steps": 4, "episodes": 2, "seeds": 1, "decisions": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_hist) -> Run:
    """A tiny run in its own project: histories on disk, a briefly trained full-context model."""
    root = tmp_path_factory.mktemp("retrain")
    cfg = load_config("tiny", {"train": {"steps": 6}, "eval": {"seeds": 1}, "study": STUDY})
    run = Run(root / "runs" / "tiny", cfg, root)
    save_histories(tiny_hist, run.histories)
    train(run, tiny_hist, progress=False)
    return run


@pytest.fixture(scope="module")
def table(run):
    return retrained.retrained_study(run, budgets=BUDGETS, progress=False)


def test_a_compressed_training_window_keeps_each_kept_tokens_own_target(tiny_cfg, tiny_hist):
    n = tiny_cfg.model.n_transit
    window = Tokens.from_transitions(samplers(tiny_cfg, tiny_hist)[0].sample(5)).tokens(slice(0, n))  # one context
    c = make("random", 4)
    out = compress_window(c, window, "original", generator=torch.Generator().manual_seed(1))
    same = compress_tokens(c, window, "original", generator=torch.Generator().manual_seed(1))
    for k in same:
        assert torch.equal(out[k], same[k]), k  # the rollout's selection, exactly
    assert out.targets.shape == (5, 5)
    idx = out.positions - window.positions[:, :1]  # (B, K + 1) offsets in the window
    assert torch.equal(out.targets, window.targets.gather(1, idx))
    assert (idx[:, -1] == n - 1).all()  # the decision's own token is always kept


def test_trainer_trains_on_windows_of_budget_plus_one_tokens(tmp_path, tiny_hist):
    cfg = load_config("tiny", {"compress": {"strategy": "recency", "budget": 5}, "train": {"steps": 3}})
    trainer = Trainer(Run.create(cfg, tmp_path / "run"), tiny_hist, progress=False)
    tokens, keep = trainer.batch(trainer.train_sampler)
    assert keep is None
    assert tokens["actions"].shape == (cfg.train.batch_size, 6) and tokens.targets.shape == (cfg.train.batch_size, 6)
    steps = tokens["positions"]
    assert (steps[:, 1:] - steps[:, :-1] == 1).all()  # recency keeps the most recent, consecutive
    more = load_config("tiny", {"compress": {"strategy": "recency", "budget": 5, "batch": 13}})
    trainer = Trainer(Run.create(more, tmp_path / "more"), tiny_hist, progress=False)
    assert trainer.batch(trainer.train_sampler)[0].targets.shape == (13, 6)  # windows per step, when set


@pytest.mark.parametrize("name", ["reward-recent", "h2o"])
def test_evicting_training_masks_whole_windows_as_the_cache_would(tmp_path, tiny_hist, name):
    """compress.kv: evict keeps the whole window (every position a target) and masks each query to the
    evicting cache's keep set (per layer and head for H2O, scored by the scorer's attention); the model
    trained this way gets the evicting cache's logits."""
    cfg = load_config("tiny", {"compress": {"strategy": name, "budget": 5, "kv": "evict"}, "train": {"steps": 2}})
    scorer = ADTransformer(cfg.model, cfg.env.name).eval() if name == "h2o" else None
    trainer = Trainer(Run.create(cfg, tmp_path / "run"), tiny_hist, progress=False, scorer=scorer)
    tokens, keep = trainer.batch(trainer.train_sampler)
    L, B, m = cfg.train.seq_len or 2 * cfg.model.n_transit, cfg.train.batch_size, cfg.model
    sets = (m.tf_n_layer, m.tf_n_head) if name == "h2o" else ()
    assert tokens.targets.shape == (B, L) and keep.shape == (B, *sets, L, L)
    assert keep.sum(-1).max() == 6 and keep.diagonal(dim1=-2, dim2=-1).all()  # K cached + the query's own token
    model = trainer.model.eval()
    feed = query_attention(scorer, tokens, per_head=True) if scorer else None
    cache = model.new_evicting_cache(tokens.batch, make(name, 5), feed=feed)
    rolled = torch.stack([model.step(cache, *(tokens[k][:, p] for k in STEP_INPUTS)) for p in range(L)], 1)
    torch.testing.assert_close(model(**tokens, keep=keep), rolled, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="keep masks per layer and head must be"):
        model(**tokens, keep=torch.ones(B, 2, 3, L, L, dtype=torch.bool))  # the tiny model has 2 heads
    trainer.fit()
    assert trainer.step == 2


@pytest.mark.parametrize("compress_cfg, message", [
    ({"strategy": "attention", "budget": 5}, "scores transitions by attention: pass scorer="),
    ({"strategy": "recency", "budget": 0}, r"compress.budget must be 1..19"),
    ({"strategy": "recency", "budget": 20}, r"compress.budget must be 1..19"),
    ({"strategy": "oracle", "budget": 5}, "cannot compress training windows"),
    ({"strategy": "threshold", "budget": 5, "kv": "evict"}, "no evicting-cache form"),
    ({"strategy": "recency", "budget": 5, "kv": "cache"}, "compress.kv must be 'reencode' or 'evict'"),
    ({"strategy": "recency", "budget": 5, "kv": "evict", "positions": "renumber"}, "gives each query other positions"),
])
def test_trainer_refuses_bad_compression_settings(tmp_path, tiny_hist, compress_cfg, message):
    with pytest.raises(ValueError, match=message):
        Trainer(Run.create(load_config("tiny", {"compress": compress_cfg}), tmp_path / "run"), tiny_hist,
                progress=False)


def test_compressed_training_resumes_exactly(tmp_path, tiny_hist):
    cfg = load_config("tiny", {"compress": {"strategy": "random", "budget": 5}, "train": {"steps": 8, "val_every": 4}})
    whole = train(Run.create(cfg, tmp_path / "whole"), tiny_hist, progress=False)
    train(Run.create(cfg, tmp_path / "parts"), tiny_hist, progress=False, until=4)
    parts = train(Run.create(cfg, tmp_path / "parts"), tiny_hist, progress=False)  # random selections continue
    a, b = load(whole).state_dict(), load(parts).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.slow
def test_study_table_has_every_cell_and_column_and_no_empty_value(run, table):
    assert list(table.columns) == retrained.COLUMNS
    cells = set(zip(table["compressor"], table["budget"], table["seed"], table["kv"]))
    assert cells == {("none", 20, 0, "cache")} | {(c, b, 0, kv) for c in ("recency", "attention") for b in BUDGETS
                                                   for kv in ("reencode", "evict")}
    assert not table.isna().any().any()
    assert (table["mode"] == "retrained").all() and (table["train_steps"] == 4).all()
    assert (table["full_return"] == table.loc[table["compressor"] == "none", "return"].iloc[0]).all()
    assert set(table.loc[table["compressor"] != "none", "context_tokens"]) == {b + 1 for b in BUDGETS}
    per_episode = pd.read_csv(run.cell("recency", 3, 0) / "returns.csv")
    assert len(per_episode) == 2 * len(per_episode["task"].unique())  # 2 episodes x 1 stream per task
    cell = Run.open(run.cell("recency", 3, 0))
    assert (cell.cfg.compress.strategy, cell.cfg.compress.budget, cell.cfg.train.steps) == ("recency", 3, 4)
    evict = Run.open(run.cell("recency", 3, 0, "evict"))  # trained under the evicting cache's keep masks
    assert (evict.cfg.compress.kv, evict.cfg.compress.budget) == ("evict", 3)
    by_kv = table[table["compressor"] == "attention"].set_index(["budget", "kv"])["flops"]
    for b in BUDGETS:  # an evicting step neither re-encodes the kept tokens nor runs a scoring pass
        assert by_kv[b, "evict"] < by_kv[b, "reencode"]


@pytest.mark.slow
def test_a_resumed_study_recomputes_nothing(run, table, monkeypatch):
    monkeypatch.setattr(retrained, "run_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    again = retrained.retrained_study(run, budgets=BUDGETS, progress=False)
    pd.testing.assert_frame_equal(again, table)
    longer = dataclasses.replace(run.cfg, study=dataclasses.replace(run.cfg.study, steps=5))
    with pytest.raises(ValueError, match="made with 4 training steps"):
        retrained.retrained_study(run.with_config(longer), ["recency"], budgets=BUDGETS, progress=False)


@pytest.mark.slow
def test_an_interrupted_study_keeps_every_finished_cell(tmp_path, run, monkeypatch):
    fresh = Run(tmp_path / "run", run.cfg, run.home)
    fresh.dir.mkdir()
    for name in ("model.safetensors", "model.json", "config.yaml"):
        (fresh.dir / name).write_bytes((run.dir / name).read_bytes())
    real, calls = retrained.run_cell, []

    def crash_on_third(*args, **kw):
        calls.append(args[1:4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(retrained, "run_cell", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        retrained.retrained_study(fresh, ["random"], budgets=BUDGETS, progress=False)
    kept = pd.read_csv(fresh.study / retrained.TABLE)
    assert set(zip(kept["compressor"], kept["budget"])) == {("none", 20), ("random", 6)}


@pytest.mark.slow
def test_results_join_both_modes_and_count_attention_work(run, table):
    training_free_study(run, ["recency", "attention"], budgets=BUDGETS, seeds=(0,), progress=False)
    both = retrained.results_table(run)
    assert set(both["mode"]) == {"retrained", "training-free"}
    assert not both[retrained.COLUMNS].isna().any().any()
    tf = both[both["mode"] == "training-free"]
    assert {"full", "none"} & set(tf["compressor"]) == {"none"}  # the re-encoded baseline is not a study cell
    model = load(run.dir)

    def counted(L: int) -> int:  # torch's own FLOP count of a forward over L tokens (explicit attention path)
        batch = samplers(run.cfg, load_for(run.cfg, run.histories))[0].sample(1)
        window = Tokens.from_transitions(batch).tokens(slice(0, L))
        with torch.no_grad(), model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: x)]), \
                FlopCounterMode(display=False) as counter:
            model(**window)
        return counter.get_total_flops()

    row = both[(both["compressor"] == "recency") & (both["budget"] == 3)].iloc[0]
    assert row["flops"] == counted(4)  # the 3 kept transitions and the decision's own token re-encoded
    row = both[(both["compressor"] == "attention") & (both["budget"] == 3)].iloc[0]
    assert row["flops"] == counted(4) + scoring_flops(run.cfg.model, 1)  # plus the scoring pass (test_cost)
    md = retrained.markdown_summary(both)
    assert "| compressor | budget | mode |" in md and "training-free" in md
    assert any(line.startswith("budget 6 of 20: best retrained") for line in retrained.headline(both, run))
    name, budget, kv = retrained.best_cell(both)
    assert budget == 3 and name in ("recency", "attention") and kv in ("reencode", "evict")
    paths = retrained.write_outputs(both, run)
    assert [p.name for p in paths] == ["results.md", "return_vs_budget_modes.png", "pareto.png",
                                       "attention_compressed.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_a_training_free_profile_row_is_costed_by_the_rule_it_was_profiled_to():
    note = "full protocol" + profile_note("heavy", 2)
    assert profile_rule(note) == {"rule": "heavy", "size": 2} and profile_rule("full protocol") is None
    assert profile_rule(profile_note("full", None)) == {"rule": "full", "size": None}
    heavy = retrained.scorer_of("profile", 8, note)
    assert heavy.needs_attention and scoring_rows(heavy) is None  # H2O: the whole pattern's column sums
    assert not retrained.scorer_of("profile", 8, profile_note("recent", None)).needs_attention
    assert retrained.scorer_of("profile", 8, float("nan")) is make("profile", 8, rule="full").__class__  # no note
    assert retrained.scorer_of("snapkv", 8, "full protocol") is make("snapkv", 8).__class__  # class defaults


def test_fine_tuning_starts_from_the_given_runs_weights(tmp_path, run, tiny_hist):
    cfg = dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, init=str(run.dir)))
    trainer = Trainer(Run.create(cfg, tmp_path / "ft"), tiny_hist, progress=False)
    start = load(run.dir).state_dict()
    assert all(torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tf_n_inner=cfg.model.tf_n_inner * 2))
    with pytest.raises(ValueError, match="train.init: .* holds a darkroom model with .*start from a run of the same"):
        Trainer(Run.create(other, tmp_path / "other"), tiny_hist, progress=False)


@pytest.mark.slow
def test_a_fine_tuned_study_starts_every_cell_from_the_run(tmp_path, run):
    fresh = Run(tmp_path / "run", run.cfg, run.home)
    fresh.dir.mkdir()
    for name in ("model.safetensors", "model.json", "config.yaml"):
        (fresh.dir / name).write_bytes((run.dir / name).read_bytes())
    ft = fresh.with_config(dataclasses.replace(run.cfg, study=dataclasses.replace(run.cfg.study, init="run", steps=2)))
    table = retrained.retrained_study(ft, ["recency"], budgets=(3,), kvs=["evict"], progress=False)
    assert set(zip(table["compressor"], table["kv"], table["init"], table["train_steps"])) == {
        ("none", "cache", "run", 2), ("recency", "evict", "run", 2)}
    cell = Run.open(ft.cell("recency", 3, 0, "evict"))
    assert cell.dir.name == "recency-b3-s0-evict-ft" and cell.cfg.train.init == str(fresh.dir)
    with pytest.raises(ValueError, match="made with 2 training steps from run"):
        retrained.retrained_study(fresh.with_config(dataclasses.replace(ft.cfg, study=dataclasses.replace(
            ft.cfg.study, init="scratch"))), ["recency"], budgets=(3,), kvs=["evict"], progress=False)
    bad = dataclasses.replace(ft.cfg, study=dataclasses.replace(ft.cfg.study, init="teacher"))
    with pytest.raises(ValueError, match="study.init must be one of"):
        retrained.cell_run(fresh.with_config(bad), "recency", 3, 0, 2)


def test_a_table_from_before_fine_tuning_reads_as_trained_from_scratch(tmp_path, table):
    old = tmp_path / retrained.TABLE
    table.drop(columns="init").to_csv(old, index=False)
    upgrade_table(old, retrained.COLUMNS)
    assert list(pd.read_csv(old).columns) == retrained.COLUMNS and (pd.read_csv(old)["init"] == "scratch").all()


def test_a_profile_cell_trains_with_the_rule_profiled_on_the_run(tmp_path, run):
    scorer = load(run.weights)
    assert retrained.strategy_kwargs(run, scorer, ["recency", "attention"]) == {}
    extra = retrained.strategy_kwargs(run, scorer, ["recency", "profile"])
    assert set(extra) == {"profile"} and extra["profile"]["rule"] in RULES
    row = retrained.run_cell(run, "profile", 3, 0, "reencode", 2, 1, extra, root=str(tmp_path))
    assert (row["compressor"], row["budget"], row["train_steps"]) == ("profile", 3, 2)
    trainer = Trainer(retrained.cell_run(run, "profile", 3, 0, 2, root=tmp_path), load_for(run.cfg, run.histories),
                      progress=False, scorer=scorer, compressor_kw=extra["profile"])
    assert trainer.compressor.rule == extra["profile"]["rule"]
    with pytest.raises(ValueError, match="'profile' keeps by a rule profiled from the full-context model"):
        retrained.run_cell(run, "profile", 3, 0, "reencode", 2, 1, {}, root=str(tmp_path / "bare"))


def test_study_arguments_are_checked(run):
    with pytest.raises(ValueError, match="cannot use compressors \\['oracle'\\]"):
        retrained.retrained_study(run, ["oracle"], progress=False)
    with pytest.raises(ValueError, match="budgets must be transitions kept in 1..19"):
        retrained.retrained_study(run, ["recency"], budgets=(40,), progress=False)


@pytest.mark.slow
def test_curve_explorer_redraws_the_chosen_cell(run, table):
    from adkit.study.figures import curve_explorer

    curves = retrained.episode_curves(run, table)
    assert set(curves) == {("none", 20)} | {(c + kv, b) for c in ("recency", "attention") for b in BUDGETS
                                            for kv in ("", " evict")}
    assert curves["recency", 3].shape == (1, 2)  # (seeds, episodes)
    box, draw = curve_explorer(curves, optimal=1.0, name="recency", budget=3)
    assert draw.figure.axes[0].get_title().startswith("recency @ 3")
    draw.widgets["name"].value = "attention"
    draw.widgets["budget"].value = 6
    assert draw.figure.axes[0].get_title().startswith("attention @ 6")
