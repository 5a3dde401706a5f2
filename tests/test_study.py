"""Training-free study: one compression path for rollouts and training, the table, resuming, the explorer."""

import dataclasses

import pandas as pd
import pytest
import torch

from adkit import compress, envs
from adkit.compress.context import attention_for, build, compress_tokens, query_attention
from adkit.compress.cost import decision_cost
from adkit.config import dump_config, load_config
from adkit.data.tokens import Tokens
from adkit.model import ADTransformer, load, save
from adkit.model.evaluate import rollout
from adkit.run import Run
from adkit.study import training_free as study
from adkit.study.figures import keep_explorer, plot_shares_over_seeds
from adkit.study.keeps import keep_view

N_TRANSIT = 12
SWEEP = dict(compressors=["recency", "h2o", "random", "oracle"], budgets=(6, 3), seeds=(0, 1),
             reduced={"oracle": study.Protocol(tasks=2, episodes=1, contexts=4, seeds=1)}, progress=False,
             kvs=("reencode",))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Run:
    """A run with a small (untrained) model and its config; the study config sizes the rollouts."""
    cfg = load_config("tiny", {"model": {"n_transit": N_TRANSIT, "tf_n_embd": 8, "tf_n_layer": 1, "tf_n_head": 2,
                                         "tf_n_inner": 16}, "study": {"episodes": 2, "decisions": 3}})
    root = tmp_path_factory.mktemp("run")
    run = Run(root / "run", cfg, root)
    torch.manual_seed(0)
    save(ADTransformer(cfg.model).eval(), run.dir)
    run.config_file.write_text(dump_config(cfg))
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    return load(run_dir.dir)


@pytest.fixture(scope="module")
def history(model):
    _, tasks = envs.task_split("darkroom")
    return rollout(model, "darkroom", tasks[:3], seeds=[0], episodes=2, progress=False).trajectories


@pytest.fixture(scope="module")
def table(run_dir):
    return study.training_free_study(run_dir, **SWEEP)


def extra(name):
    return {"profile": {"rule": "heavy", "size": 2}}.get(name, {})


# ---- one selection path ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", study.study_compressors())
def test_rollout_window_and_training_batch_select_the_same(model, history, name):
    t, n = 30, N_TRANSIT
    window = history.window(t, n)  # what decision t of a rollout sees
    B = window.batch
    batch = {"states": history.states[:, t - n:t + 1], "actions": history.actions[:, t - n:t + 1],
             "rewards": history.rewards[:, t - n:t + 1], "next_states": history.next_states[:, t - n:t + 1],
             "positions": torch.arange(t - n, t + 1).expand(B, n + 1),
             "episode_return": history.episode_return[:, t - n:t + 1]}
    inputs = Tokens.from_transitions(batch)  # the same transitions as a training sequence
    assert torch.equal(inputs.targets[:, -1], history.actions[:, t])
    out = []
    for tokens in (window, inputs):
        c = build(name, 5, model, "darkroom", **extra(name))
        attention = query_attention(model, tokens) if c.needs_attention else None
        out.append(compress_tokens(c, tokens, model.positions, attention,
                                   generator=torch.Generator().manual_seed(7)))
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k
    assert out[0]["actions"].shape[1] <= 6 and torch.equal(out[0]["positions"][:, -1], window["positions"][:, -1])


def test_query_attention_is_the_mean_of_every_layers_and_heads_pattern(model, history):
    window = history.window(30, N_TRANSIT)
    per_head = query_attention(model, window, per_head=True)  # (B, layer, H, L, L); the pass ends after the last
    _, cache = model.run_with_cache(**window, names="hook_pattern")  # the whole pass
    assert torch.equal(per_head, torch.stack([cache["pattern", i] for i in range(model.cfg.tf_n_layer)], 1))
    torch.testing.assert_close(query_attention(model, window), per_head.mean((1, 2)))


@pytest.mark.parametrize("name", [n for n in study.study_compressors() if build(n, 5, None, "darkroom",
                                                                                  **extra(n)).needs_attention])
def test_scoring_with_the_query_row_alone_keeps_what_the_whole_pattern_keeps(model, history, name):
    window = history.window(30, N_TRANSIT)
    c = build(name, 5, model, "darkroom", **extra(name))
    scores = attention_for(c, model, window)
    rows = {"current": 1, "window": getattr(c, "window", None)}.get(c.evict_attention)  # the last rows it reads
    B, L = window.batch, window.length
    assert scores.shape == ((B, L - 1) if rows else (B, L, L))
    pattern = query_attention(model, window)  # (B, L, L) through the explicit path
    if rows:  # TOVA, threshold, adaptive: the deciding query's row; SnapKV: the mean of its window's
        torch.testing.assert_close(scores, pattern[:, -rows:, :-1].mean(1), atol=1e-6, rtol=1e-5)
    kept = [compress_tokens(c, window, model.positions, a, generator=torch.Generator().manual_seed(7))
            for a in (scores, pattern)]
    assert torch.equal(kept[0]["positions"], kept[1]["positions"])


@pytest.mark.parametrize("name, kw", [(n, extra(n)) for n in compress.COMPRESSORS]
                         + [("profile", {"rule": r}) for r in compress.ProfileCompressor.RULES])
def test_needs_attention_exactly_when_selection_without_attention_raises(model, history, name, kw):
    window = history.window(30, N_TRANSIT)
    c = build(name, 4, model, "darkroom", **kw)
    try:
        compress_tokens(c, window, model.positions)
        raised = False
    except ValueError as e:
        assert "attention" in str(e)
        raised = True
    assert raised == c.needs_attention
    compress_tokens(c, window, model.positions, query_attention(model, window))  # with attention: fine


# ---- the study table ---------------------------------------------------------------------------------


def test_study_writes_every_cell_with_every_column_filled(run_dir, table):
    assert list(table.columns) == study.COLUMNS
    assert not table.isna().any().any() and not (table.astype(str) == "").any().any()
    cells = {(c, b, s) for c, b, kv, s in table[study.KEY].itertuples(index=False)}
    assert set(table["kv"]) == {"cache", "recompute", "reencode"}  # this sweep re-encodes only
    want = {(c, N_TRANSIT, s) for c in study.BASELINES for s in (0, 1)}
    want |= {(c, b, s) for c in ("recency", "h2o", "random") for b in (6, 3) for s in (0, 1)}
    want |= {("oracle", b, 0) for b in (6, 3)}  # its reduced protocol runs the first seed only
    assert cells == want and len(table) == len(want)
    assert (table["mode"] == "training-free").all()
    assert set(table.loc[table["compressor"] == "none", "backend"]) == {"cache"}
    oracle = table[table["compressor"] == "oracle"]
    assert (oracle["tasks"] == 2).all() and (oracle["episodes"] == 1).all() and (oracle["contexts"] == 4).all()
    assert oracle["note"].str.contains("reduced").all()
    assert (table["decision_ms"] > 0).all() and (table["peak_mem_mb"] > 0).all()
    assert pd.read_csv(run_dir.study / "training_free.csv").shape == table.shape


def test_no_compression_agrees_and_the_others_are_bounded(table):
    """``none``: the cache's policy against the whole history re-encoded (the same function, computed
    another way); ``full``: DICP's re-encode of the last n_transit, the same function for this one-layer
    model, so its rollout takes the cache rollout's actions and return."""
    base = table[table["compressor"].isin(study.BASELINES)]
    assert (base["agreement"] == 1).all() and (base["kl"] < 1e-9).all()
    assert ((table["agreement"] >= 0) & (table["agreement"] <= 1)).all() and (table["kl"] >= 0).all()
    by_seed = base.pivot(index="seed", columns="compressor", values="return")
    assert (by_seed["full"] == by_seed["none"]).all()
    kept = table[~table["compressor"].isin(study.BASELINES)]
    assert (kept["context_tokens"] == kept["budget"] + 1).all()


def test_resume_computes_only_missing_cells(run_dir, table, monkeypatch):
    calls = []
    real = study.run_cell
    monkeypatch.setattr(study, "run_cell", lambda *a, **k: calls.append(a[4:7]) or real(*a, **k))
    again = study.training_free_study(run_dir, **SWEEP)
    assert calls == [] and again.equals(table)
    study.training_free_study(run_dir, **{**SWEEP, "compressors": ["recency"]})  # other rows keep their protocol
    assert calls == []
    more = study.training_free_study(run_dir, **{**SWEEP, "budgets": (6, 3, 2)})
    new = [(c, 2, s) for c in ("recency", "h2o", "random") for s in (0, 1)] + [("oracle", 2, 0)]
    assert sorted(calls) == sorted(new)
    assert more.iloc[:len(table)].equals(table)


def test_interrupted_sweep_keeps_finished_rows(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "t.csv"
    real, calls = study.run_cell, []

    def flaky(*a, **k):
        calls.append(a[4:7])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(study, "run_cell", flaky)
    sweep = {**SWEEP, "compressors": ["recency", "random"], "budgets": (3,), "seeds": (0,)}
    with pytest.raises(KeyboardInterrupt):
        study.training_free_study(run_dir, **sweep, out=out)
    kept = pd.read_csv(out)
    assert len(kept) == 2 and [tuple(r) for r in kept[["compressor", "budget", "seed"]].itertuples(index=False)] == [
        (c, b, s) for c, b, s in calls[:2]]
    calls.clear()
    monkeypatch.setattr(study, "run_cell", lambda *a, **k: calls.append(a[4:7]) or real(*a, **k))
    done = study.training_free_study(run_dir, **sweep, out=out)
    assert len(done) == 4 and calls == [("recency", 3, 0), ("random", 3, 0)] and done.iloc[:2].equals(kept)


def test_rows_of_another_protocol_are_refused(run_dir, table):
    longer = dataclasses.replace(run_dir.cfg.study, episodes=3)
    with pytest.raises(ValueError, match="another out="):
        study.training_free_study(run_dir.with_config(dataclasses.replace(run_dir.cfg, study=longer)), **SWEEP)
    with pytest.raises(ValueError, match="budgets"):
        study.training_free_study(run_dir, **{**SWEEP, "budgets": (N_TRANSIT,)})
    with pytest.raises(ValueError, match="cannot use compressors"):
        study.training_free_study(run_dir, **{**SWEEP, "compressors": ["nope"]})


def test_summary_markdown_and_figure(run_dir, table, tmp_path):
    s = study.summary_table(table)
    assert list(s["compressor"][:2]) == ["none", "full"]
    assert set(zip(s["compressor"], s["budget"])) == set(zip(table["compressor"], table["budget"]))
    assert (s.loc[s["compressor"] == "oracle", "seeds"] == 1).all()
    md, png, cost = study.write_outputs(table, tmp_path)
    text = md.read_text()
    assert "| compressor | budget | kv |" in text and "oracle" in text and "2 tasks x 1 ep" in text
    assert png.stat().st_size > 10_000 and cost.stat().st_size > 10_000


def test_evicting_cells_sit_beside_re_encoded_ones(run_dir, tmp_path):
    """``kv`` is a dimension of the table: evicting cells for strategies that have an eviction form,
    their agreement read from the evicting cache stepped through the reference's streams; a cache
    that keeps the whole window is the full context (agreement 1, the same return)."""
    out = tmp_path / "kv.csv"
    df = study.training_free_study(run_dir, ["recency", "h2o", "threshold"], (N_TRANSIT - 1, 3), (0,),
                                   progress=False, out=out, kvs=("reencode", "evict"))
    cells = set(zip(df["compressor"], df["budget"], df["kv"]))
    assert ("threshold", 3, "reencode") in cells and ("threshold", 3, "evict") not in cells  # no eviction form
    assert {("none", N_TRANSIT, "cache"), ("full", N_TRANSIT, "recompute"), ("h2o", 3, "evict")} <= cells
    evict = df[df["kv"] == "evict"].set_index(["compressor", "budget"])
    assert (evict["context_tokens"] == evict.index.get_level_values("budget") + 1).all()
    whole = evict.loc[("recency", N_TRANSIT - 1)]
    assert whole["agreement"] == 1 and whole["kl"] < 1e-9 and whole["return"] == whole["full_return"]
    s = study.summary_table(df)
    assert len(s) == len(df)  # one seed: one row per compressor x budget x kv


def test_a_table_from_before_the_kv_column_is_upgraded(run_dir, tmp_path):
    out = tmp_path / "old.csv"
    study.training_free_study(run_dir, ["recency"], (3,), (0,), progress=False, out=out, kvs=("reencode",))
    pd.read_csv(out).drop(columns="kv").to_csv(out, index=False)
    df = study.training_free_study(run_dir, ["recency"], (3,), (0,), progress=False, out=out, kvs=("reencode",))
    assert list(df["kv"]) == ["cache", "recompute", "reencode"] and len(df) == 3  # nothing recomputed


# ---- cost --------------------------------------------------------------------------------------------


def test_decision_cost_counts_the_cache_and_shrinks_with_the_budget(model, history):
    window = history.window(30, N_TRANSIT)
    _, none_mb = decision_cost(model, window, "none")
    cache_mb = 2 * model.cfg.tf_n_layer * 3 * model.cfg.n_transit * model.cfg.tf_n_embd * 4 / 2**20
    assert none_mb >= cache_mb
    _, full_mb = decision_cost(model, window, "full")
    _, small_mb = decision_cost(model, window, "recency", compress.make("recency", 2))
    assert 0 < small_mb < full_mb


# ---- what each strategy keeps: the explorer ---------------------------------------------------------------


def test_keep_explorer_redraws_on_widget_changes(model, history):
    view = keep_view(model, "darkroom", history.window(30, N_TRANSIT).rows(slice(0, 1)),
                     ["recency", "h2o", "random", "oracle", "profile"])
    box, draw = keep_explorer(view, "recency", 4)
    fig = draw.figure
    assert fig.axes[0].get_title() == f"recency keeps 4 of {N_TRANSIT - 1}"
    assert list(view.kept("recency", 4)) == list(range(N_TRANSIT - 5, N_TRANSIT - 1))
    draw.widgets["budget"].value = 6
    assert fig.axes[0].get_title() == f"recency keeps 6 of {N_TRANSIT - 1}"
    draw.widgets["name"].value = "h2o"
    assert fig.axes[0].get_title().startswith("h2o keeps")
    full = view.extra["profile"]["rule"] == "full"  # a profile may keep everything
    assert all(len(view.kept(n, 6)) <= 6 for n in view.names if not (n == "profile" and full))
    assert draw(name="oracle", budget=2) is fig and fig.axes[0].get_title() == f"oracle keeps 2 of {N_TRANSIT - 1}"


def test_reduced_protocol_compares_with_the_full_context_on_the_same_random_numbers(run_dir, tmp_path):
    # keeping all n_transit - 1 earlier transitions compresses nothing: same decisions, same draws, same return
    df = study.training_free_study(run_dir, ["recency"], (N_TRANSIT - 1,), (0,), progress=False,
                                   reduced={"recency": study.Protocol(tasks=3, episodes=1)}, out=tmp_path / "t.csv")
    row = df[df["compressor"] == "recency"].iloc[0]
    assert row["tasks"] == 3 and row["episodes"] == 1 and row["return"] == row["full_return"]


def fails_on_bad(name: str) -> dict:
    """A cell for the process pool (importable by spawned workers): cell ``bad`` fails."""
    if name == "bad":
        raise RuntimeError("this cell always fails")
    return {"name": name, "value": len(name)}


@pytest.mark.slow
def test_a_failed_cell_in_the_process_pool_loses_no_finished_cell(tmp_path):
    from adkit.study.cells import CellsFailed, run_cells

    path = tmp_path / "table.csv"
    cells = [("bad",), ("good",), ("fine",), ("okay",)]
    with pytest.raises(CellsFailed, match=r"(?s)1 cell\(s\) failed.*'bad'.*always fails"):
        run_cells(path, ["name", "value"], cells, lambda r: (r["name"],), fails_on_bad, desc="cells",
                  workers=2, progress=False)
    assert sorted(pd.read_csv(path)["name"]) == ["fine", "good", "okay"]


def test_shares_over_seeds_draw_mean_and_sample_std_per_part(tmp_path):
    from adkit.study.summaries import over_seeds

    rows = [dict(compressor=c, budget=b, mode=m, kv=kv, init=init, train_seed=s, share=v)
            for (m, kv, init) in (("training-free", "evict", None), ("retrained", "evict", "run"),
                                  ("retrained", "evict", "scratch"))
            for c, b, shares in (("random", 8, [0.5, 0.7, 0.6]), ("random", 4, [0.2, 0.4, 0.3]),
                                 ("recency", 8, [0.9, 1.0, 1.1]), ("none", 16, [1.0, 1.0, 1.0]))
            for s, v in enumerate(shares)]
    rows += [dict(compressor="h2o", budget=8, mode="training-free", kv="evict", init=None, train_seed=s, share=0.8)
             for s in range(3)]  # in one panel only
    table = over_seeds(pd.DataFrame(rows))
    cell = table[table["fine_tuned"] & (table["compressor"] == "random") & (table["budget"] == 4)]
    assert cell[["seeds", "mean", "std", "low", "high"]].values.tolist() == [pytest.approx([3, 0.3, 0.1, 0.2, 0.4])]
    assert set(table[table["fine_tuned"]]["mode"]) == {"retrained"} and (table["fine_tuned"].sum() == 4)  # init "run"
    equal = pd.DataFrame(rows).assign(equal_targets=lambda d: d["init"] == "scratch")
    assert over_seeds(equal)["equal_targets"].sum() == 4  # the from-scratch cells, a part of their own
    table.to_csv(tmp_path / "shares.csv", index=False)  # the figure redraws from the saved table alone
    fig = plot_shares_over_seeds(pd.read_csv(tmp_path / "shares.csv"), recommended="recency")
    left, right, scratch = fig.axes[:3]
    assert [left.get_title(), right.get_title(), scratch.get_title()] == [
        "training-free, kv: evict", "retrained (fine-tuned), kv: evict", "retrained (from scratch), kv: evict"]
    bars = {c.get_label(): c for c in left.containers}
    assert set(bars) == {"random", "recency", "h2o"}  # the full context is the 100% line, not a strategy
    line, _, (err,) = bars["random"]
    assert list(line.get_xdata()) == pytest.approx([4, 8], rel=0.02)  # within the dodge
    assert list(line.get_ydata()) == pytest.approx([30.0, 60.0])
    at_8 = sorted([line.get_xdata()[1], bars["recency"][0].get_xdata()[0], bars["h2o"][0].get_xdata()[0]])
    assert [at_8[1] / at_8[0], at_8[2] / at_8[1], at_8[1]] == pytest.approx([2 ** 0.025, 2 ** 0.025, 8])  # dodged
    pair = sorted(c[0].get_xdata()[-1] for c in scratch.containers)  # two strategies there: centred on the budget
    assert [pair[1] / pair[0], pair[0] * pair[1]] == pytest.approx([2 ** 0.025, 64])
    assert [seg[1, 1] - seg[0, 1] for seg in err.get_segments()] == pytest.approx([20.0, 20.0])  # 2 x std (ddof=1)
    assert bars["recency"][0].get_linewidth() > line.get_linewidth()  # the recommended one stands out
    assert "(recommended)" in " ".join(t.get_text() for t in scratch.get_legend().get_texts())
    older = pd.read_csv(tmp_path / "shares.csv").drop(columns="equal_targets")  # saved before that column
    table = pd.concat([older[older["mode"] == "training-free"], table[table["mode"] == "retrained"]])
    wrapped = plot_shares_over_seeds(table, recommended="recency", columns=2)  # 3 panels: 2 + 1 in 2 rows
    assert [ax.get_visible() for ax in wrapped.axes] == [True, True, True, False]
    assert [wrapped.axes[i].get_title() for i in (0, 2)] == ["training-free, kv: evict",
                                                            "retrained (from scratch), kv: evict"]
    assert len(wrapped.axes[0].containers) == 3  # the older table's cells are drawn


def test_shares_by_budget_are_a_strategy_by_budget_table_per_part():
    from adkit.study.summaries import by_budget, part_label

    rows = [dict(mode="retrained", kv=kv, fine_tuned=False, compressor=c, budget=b, seeds=3, mean=m, std=0.01,
                 low=m - 0.01, high=m + 0.02)
            for kv in ("evict", "reencode") for c, b, m in (("none", 200, 1.0), ("recency", 100, 0.999),
                                                           ("random", 100, 0.974), ("random", 25, 0.691))]
    tables = by_budget(pd.DataFrame(rows))
    assert list(tables) == ["retrained (from scratch), kv: evict", "retrained (from scratch), kv: reencode"]
    assert part_label("retrained", "reencode", False, True) == "retrained (from scratch, equal targets), kv: reencode"
    grid = tables["retrained (from scratch), kv: evict"]
    assert grid.columns.tolist() == ["strategy", "K = 100", "K = 25"]  # no baseline column
    assert grid.values.tolist() == [["recency", "99.9 ± 1.0% (98.9-101.9)", ""],
                                    ["random", "97.4 ± 1.0% (96.4-99.4)", "69.1 ± 1.0% (68.1-71.1)"]]


def test_verdicts_name_the_best_and_weigh_the_recommended_against_random_by_the_spread():
    from adkit.study.summaries import verdicts

    def part(fine_tuned, shares):  # shares: compressor -> (mean, std)
        return [dict(mode="retrained", kv="evict", fine_tuned=fine_tuned, compressor=c, budget=50, seeds=3, mean=m,
                     std=sd, low=m - sd, high=m + sd) for c, (m, sd) in shares.items()]

    one_seed = [dict(mode="training-free", kv="evict", fine_tuned=False, compressor=c, budget=25, seeds=1, mean=m,
                     std=float("nan"), low=m, high=m) for c, m in (("random", 0.5), ("recency", 0.4))]
    table = pd.DataFrame(part(True, {"none": (1.0, 0.0), "random": (0.80, 0.01), "recency": (0.95, 0.02)})
                         + part(False, {"random": (0.90, 0.05), "recency": (0.93, 0.04), "uniform": (0.97, 0.01)})
                         + one_seed)
    tuned, scratch, one_seed = verdicts(table, "recency")
    assert tuned.startswith("K=50 (retrained (fine-tuned), kv: evict): best `recency` 95.0 ± 2.0% (93.0-97.0%)")
    assert "beats random by more than the spread (+15.0 vs 2.0 points)" in tuned
    assert scratch.startswith("K=50 (retrained (from scratch), kv: evict): best `uniform` 97.0")  # parts apart
    assert "does NOT beat random by more than the spread (+3.0 vs 5.0 points)" in scratch
    assert one_seed.startswith("K=25 (training-free, kv: evict): best `random`")
    assert "-10.0 points, one seed" in one_seed
