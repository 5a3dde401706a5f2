"""Attention extraction: reference numerics, metadata, the file, lazy loads, figures and the explorer."""

import math

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from adkit.analysis.attention import (
    AttentionFileError,
    Contexts,
    episode_decisions,
    extract,
    load_record,
    record_contexts,
    rollout_contexts,
    save_record,
    token_metadata,
    window_contexts,
)
from adkit.analysis.figures import explorer, plot_budget_coverage, save_figures, save_original_set
from adkit.analysis.insights import budget_coverage
from adkit.data.tokens import Tokens, returns_so_far
from adkit.model import ADTransformer, ModelConfig
from adkit.run import MissingStage

HORIZON = 20


def sharp_model(n_transit=12, layers=2, heads=2, seed=0) -> ADTransformer:
    """A small model with large attention weights, so patterns are far from uniform."""
    torch.manual_seed(seed)
    m = ADTransformer(ModelConfig(n_transit=n_transit, tf_n_embd=16, tf_n_layer=layers, tf_n_head=heads,
                                  tf_n_inner=32, tf_dropout=0.0, tf_attn_dropout=0.0))
    with torch.no_grad():
        for block in m.blocks:
            block.attn.qkv.weight.normal_(0, 0.6)
    return m.eval()


def contexts(B=6, T=12, seed=0) -> Contexts:
    """Random contexts of T consecutive transitions starting anywhere in a 200-step stream."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 200, (B, 1), generator=g)
    rewards, positions = (torch.rand(B, T, generator=g) < 0.3).float(), start + torch.arange(T)
    inputs = Tokens(states=torch.randint(0, 9, (B, T, 2), generator=g),
                    actions=torch.randint(0, 5, (B, T), generator=g), rewards=rewards,
                    next_states=torch.randint(0, 9, (B, T, 2), generator=g),
                    queries=torch.randint(0, 9, (B, T, 2), generator=g), positions=positions,
                    episode_return=returns_so_far(rewards, positions % HORIZON == 0))
    return Contexts(inputs, np.tile([[1, 2]], (B, 1)), np.arange(B), start[:, 0].numpy() + T, np.zeros(B, int))


def reference_patterns(m: ADTransformer, inputs) -> torch.Tensor:
    """Explicit-softmax patterns recomputed by hand from each block's qkv: (layer, B, head, T, T)."""
    B, T = inputs["actions"].shape
    H, dh = m.cfg.tf_n_head, m.cfg.tf_n_embd // m.cfg.tf_n_head
    x = m.embed(**{k: v for k, v in inputs.items() if k != "positions"})
    ang = inputs["positions"].float()[:, None, :, None] * m.cfg.rope_base ** (-torch.arange(0, dh, 2).float() / dh)

    def rope(t):  # (B, H, T, dh): rotate channel pairs (2i, 2i+1) by the position's angle
        out = t.clone()
        out[..., 0::2] = t[..., 0::2] * ang.cos() - t[..., 1::2] * ang.sin()
        out[..., 1::2] = t[..., 0::2] * ang.sin() + t[..., 1::2] * ang.cos()
        return out

    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    patterns = []
    for blk in m.blocks:
        q, k, v = blk.attn.qkv(blk.ln_1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, H, dh).transpose(1, 2) for t in (q, k, v))
        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(dh)
        att = torch.exp(scores - scores.amax(-1, keepdim=True)) * causal
        att = att / att.sum(-1, keepdim=True)
        patterns.append(att)
        x = x + blk.attn.proj((att @ v).transpose(1, 2).reshape(B, T, -1))
        x = x + blk.mlp(blk.ln_2(x))
    return torch.stack(patterns)


@pytest.fixture(scope="module")
def model():
    return sharp_model()


@pytest.fixture(scope="module")
def record(model):
    return record_contexts(model, contexts(), "windows")


# ---------------------------------------------------------------- extraction


def test_extraction_equals_explicit_softmax_reference(model):
    ctx = contexts()
    patterns, _ = extract(model, ctx.inputs, batch_size=4)  # two chunks, the second partial
    with torch.no_grad():
        reference = reference_patterns(model, ctx.inputs)
    assert patterns.shape == (2, 6, 2, 12, 12)
    assert reference.std() > 0.05  # far from uniform: a swapped head or layer would show
    torch.testing.assert_close(patterns, reference, atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        _, cache = model.run_with_cache(**ctx.inputs, names="hook_pattern")
    torch.testing.assert_close(patterns, cache.stack("pattern"))


def test_only_requested_layers_and_heads_are_extracted(model):
    ctx = contexts()
    full, _ = extract(model, ctx.inputs)
    part, _ = extract(model, ctx.inputs, layers=[1], heads=[1])
    assert part.shape == (1, 6, 1, 12, 12)
    torch.testing.assert_close(part, full[1:2, :, 1:2])
    with pytest.raises(ValueError, match="layers must be"):
        extract(model, ctx.inputs, layers=[2])


def test_patterns_are_causal_rows_sum_to_one(record):
    p = record.patterns  # (layer, B, head, T, T)
    upper = np.triu(np.ones(p.shape[-2:], dtype=bool), k=1)
    assert np.all(p[..., upper] == 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_fused_and_explicit_paths_give_the_same_logits(model):
    ctx = contexts()
    _, explicit = extract(model, ctx.inputs)  # hooked: explicit softmax
    with torch.no_grad():
        fused = model(**ctx.inputs)[:, -1]  # no hooks: scaled_dot_product_attention
    assert not model._hooked()
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-4)


def test_token_metadata_on_a_hand_built_context():
    positions = np.array([[17, 18, 19, 20, 21, 39, 40]])  # 7 tokens crossing two episode starts (20, 40)
    meta = token_metadata(positions, HORIZON)
    assert meta["episode"].tolist() == [[0, 0, 0, 1, 1, 1, 2]]
    assert meta["step"].tolist() == [[17, 18, 19, 0, 1, 19, 0]]
    assert meta["is_query"].tolist() == [[False] * 6 + [True]]


def test_window_contexts_follow_the_token_layout(tiny_cfg, tiny_hist):
    ctx = window_contexts(tiny_cfg, tiny_hist, 10, seed=1)
    T = tiny_cfg.model.n_transit
    assert ctx.inputs["actions"].shape == (10, T) and len(ctx) == 10
    assert torch.equal(ctx.inputs["queries"][:, :-1], ctx.inputs["states"][:, 1:])  # q_k = s_{k+1}
    pos = ctx.inputs["positions"].numpy()
    assert np.all(np.diff(pos, axis=1) == 1)
    np.testing.assert_array_equal(ctx.decision, pos[:, -1] + 1)
    rows = tiny_hist.task_index(ctx.task)  # every window's task is a train task of the histories
    b = 3
    streams = np.flatnonzero((tiny_hist.actions[rows[b], :, pos[b]].T == ctx.inputs["actions"][b].numpy()).all(1))
    assert any(tiny_hist.actions[rows[b], s, ctx.decision[b]] == ctx.next_action[b] for s in streams)


def test_rollout_contexts_at_decision_steps(tiny_cfg):
    m = ADTransformer(tiny_cfg.model).eval()
    n = tiny_cfg.model.n_transit
    assert episode_decisions(n, HORIZON, 80) == [20, 40, 60]
    ctx = rollout_contexts(m, tiny_cfg, decisions=[25, 60], trajectories=3)
    assert len(ctx) == 6
    assert ctx.trajectory.tolist() == [0, 0, 1, 1, 2, 2] and ctx.decision.tolist() == [25, 60] * 3
    pos = ctx.inputs["positions"].numpy()
    np.testing.assert_array_equal(pos[:, -1] + 1, ctx.decision)  # the context ends just before the decision
    np.testing.assert_array_equal(pos[:, 0], ctx.decision - n)
    with pytest.raises(ValueError, match="decision steps must lie in"):
        rollout_contexts(m, tiny_cfg, decisions=[5])


# ---------------------------------------------------------------- the file


def test_file_round_trip_keeps_both_sources(record, tmp_path):
    path = tmp_path / "attention" / "attention.h5"
    save_record(record, path)
    rollout = record_contexts(sharp_model(seed=1), contexts(seed=1), "rollout")
    save_record(rollout, path)
    save_record(record, path)  # re-extracting one source keeps the other
    back = load_record(tmp_path, "windows")
    np.testing.assert_allclose(back.patterns, record.patterns, atol=1e-3)  # float16 on disk
    for name in record.tokens:
        np.testing.assert_array_equal(back.tokens[name], record.tokens[name])
    for name in record.samples:
        np.testing.assert_array_equal(back.samples[name], record.samples[name])
    assert back.meta["horizon"] == HORIZON and back.meta["source"] == "windows"
    assert back.layers == (0, 1) and back.heads == (0, 1)
    np.testing.assert_allclose(load_record(path, "rollout").patterns, rollout.patterns, atol=1e-3)
    with h5py.File(path) as f:
        assert f["windows/patterns"].dtype == np.float16 and f.attrs["format"] == "adkit-attention"


def test_missing_and_corrupt_files_name_the_command(record, tmp_path):
    path = tmp_path / "attention" / "attention.h5"
    with pytest.raises(MissingStage, match="adkit attention --run-dir .*02_extract_attention"):
        load_record(path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(AttentionFileError, match="not a readable HDF5 file.*adkit attention"):
        load_record(path)
    save_record(record, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AttentionFileError, match="adkit attention"):
        load_record(path)
    save_record(record, path)
    with pytest.raises(AttentionFileError, match="--source rollout"):
        load_record(path, "rollout")
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(AttentionFileError, match="not an adkit attention file"):
        load_record(path)


def test_lazy_load_reads_only_requested_layers_and_heads(record, tmp_path, monkeypatch):
    path = save_record(record, tmp_path / "a.h5")
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        if self.name.endswith("patterns"):
            reads.append(key)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    part = load_record(path, layers=[1], heads=[0])
    assert part.patterns.shape == (1, record.n_samples, 1, record.seq_len, record.seq_len)
    np.testing.assert_allclose(part.patterns[0, :, 0], record.patterns[1, :, 0], atol=1e-3)
    assert reads == [(1, slice(None), 0)]  # one slice, the one asked for
    with pytest.raises(KeyError, match="layer 0 is not loaded"):
        part.pattern(0, 0)
    with pytest.raises(KeyError, match="head 1 is not loaded"):
        part.pattern(1, 0, head=1)


# ---------------------------------------------------------------- figures and the explorer


def test_original_figure_set_and_additions(record, tmp_path):
    paths = save_original_set(record, tmp_path, samples=2, layers=[1])
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names == ["attention/layer_1/attention_heatmap_sample0_layer1.png",
                     "attention/layer_1/attention_heatmap_sample1_layer1.png",
                     "attention/layer_1/attention_lines_sample0_layer1.png",
                     "attention/layer_1/attention_lines_sample1_layer1.png",
                     "attention/layer_1/attention_summary_layer1.png"]
    coverage = budget_coverage(record, [8, 4, 2])
    extra = save_figures(record, tmp_path / "figs", samples=1, coverage=coverage)
    assert {p.name for p in extra} >= {"stats_grid.png", "episode_mass.png", "rollout_sample0.png",
                                       "budget_coverage.png"}
    assert all(p.stat().st_size > 10_000 for p in paths + extra)
    assert plt.get_fignums() == []  # every figure closed after saving


def test_budget_coverage_figure_has_a_panel_per_kind_and_a_line_per_rule_and_layer(record):
    coverage = budget_coverage(record, [8, 4, 2])
    fig = plot_budget_coverage(coverage)
    kinds = list(dict.fromkeys(coverage["kind"]))
    assert [ax.get_title() for ax in fig.axes] == ["all of it"] + [f"on {k} transitions" for k in kinds[1:]]
    layers = coverage["layer"].nunique()
    assert len(fig.axes[0].lines) == 2 * (layers + 1) + 1  # per rule: each layer and their mean; random
    mean = fig.axes[0].lines[layers]  # recency's layer mean
    part = coverage[(coverage["kind"] == "all") & (coverage["keep"] == "recency")].groupby("budget")["share"].mean()
    np.testing.assert_allclose(mean.get_ydata(), part.values)
    plt.close(fig)


def test_explorer_sliders_redraw_from_the_record(model):
    ctx = contexts(B=4)
    ctx.trajectory, ctx.decision = np.array([0, 0, 1, 1]), np.array([30, 50, 30, 50])  # two trajectories
    rec = record_contexts(model, ctx, "rollout")
    box, draw = explorer(rec, layer=0, head=-1)
    fig, sliders = draw.figure, draw.widgets

    def state():
        heat = fig.axes[0].images[0].get_array().copy()
        bars = fig.axes[1].patches[0].get_data().values.copy()  # the query row's bars (stairs)
        return heat, bars, fig._suptitle.get_text()

    before = state()
    np.testing.assert_allclose(before[0], rec.pattern(0, 0))
    for name, value, expect in (("layer", 1, "layer 1"), ("head", 0, "head 0"), ("sample", 1, "trajectory 1"),
                                ("decision", 1, "decision 50")):
        sliders[name].value = value
        after = state()
        assert expect in after[2]
        assert not np.array_equal(after[0], before[0]) and not np.array_equal(after[1], before[1])
        before = after
    np.testing.assert_allclose(after[0], rec.pattern(1, 3, head=0))  # trajectory 1, second decision
    np.testing.assert_allclose(after[1], rec.pattern(1, 3, head=0)[-1])
    assert sliders["layer"].continuous_update is False
    draw(layer=0, head=-1, sample=0, decision=0)  # headless: draws the given values, sliders untouched
    np.testing.assert_allclose(state()[0], rec.pattern(0, 0))
    assert sliders["layer"].value == 1


# ---------------------------------------------------------------- the command


@pytest.mark.slow
def test_cli_attention_end_to_end(tmp_path, monkeypatch, capsys, tiny_run):
    from adkit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["attention", "--run-dir", "runs/none"]) == 2
    assert "adkit train" in capsys.readouterr().err
    assert main(["attention", "--run-dir", "runs/tiny", "--samples", "12", "--figs", "figs"]) == 0
    out = capsys.readouterr().out
    assert "ANALYZING LAYER 1" in out and "Recommended compressor:" in out and "importance" in out
    for name in ("attention.h5", "insights.md", "insights.json"):
        assert (tmp_path / "runs/tiny/attention" / name).exists()
    assert (tmp_path / "figs/attention/layer_0/attention_summary_layer0.png").exists()
    assert load_record("runs/tiny").n_samples == 12


def test_window_explorer_titles_count_from_zero_and_the_decision_follows_the_sample(model):
    ctx = contexts(B=3)
    ctx.inputs.rewards[1] = 0.0  # window 1 has no rewarded transition
    rec = record_contexts(model, ctx, "windows")
    box, draw = explorer(rec, layer=0)
    fig, sliders = draw.figure, draw.widgets
    assert fig._suptitle.get_text().split(" | ")[1].startswith("sample 0 (decision at step")
    sliders["sample"].value = 2
    assert sliders["decision"].label == str(rec.samples["decision"][2])
    assert sliders["decision"].layout.display == "none"  # one decision per window: hidden, not a dead control
    assert fig.axes[1].get_legend() is not None  # rewarded transitions marked
    sliders["sample"].value = 1
    assert sliders["decision"].label == str(rec.samples["decision"][1])
    assert fig.axes[1].get_legend() is None  # nothing rewarded: no legend for it
