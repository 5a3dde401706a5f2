"""Insights: the original report, compressor rules, the ablation check on a model with a known answer."""

import json

import numpy as np
import pytest
import torch

from adkit.analysis.attention import Contexts, build_record
from adkit.analysis.insights import (
    ablation_check,
    analyze,
    budget_coverage,
    coverage_table,
    drop_tokens,
    episode_profile,
    recommend,
    report,
    spearman,
    write_insights,
)
from adkit.data.tokens import Tokens

HORIZON = 20


def hand_record(rows, rewards=None, start=0, source="windows"):
    """A one-layer, one-head record whose every query row is ``rows[b]`` (B, T); earlier rows uniform causal."""
    rows = np.asarray(rows, dtype=np.float32)
    B, T = rows.shape
    pattern = np.tril(np.ones((T, T), np.float32)) / np.arange(1, T + 1, dtype=np.float32)[:, None]
    patterns = np.repeat(pattern[None], B, 0)  # (B, T, T)
    patterns[:, -1] = rows
    g = torch.Generator().manual_seed(0)
    inputs = Tokens(states=torch.randint(0, 9, (B, T, 2), generator=g),
                    actions=torch.randint(0, 5, (B, T), generator=g),
                    rewards=torch.zeros(B, T) if rewards is None else torch.as_tensor(rewards, dtype=torch.float32),
                    next_states=torch.randint(0, 9, (B, T, 2), generator=g),
                    queries=torch.randint(0, 9, (B, T, 2), generator=g),
                    positions=torch.arange(start, start + T).expand(B, T), episode_return=torch.zeros(B, T))
    ctx = Contexts(inputs, np.zeros((B, 2), int), np.arange(B), np.full(B, start + T), np.zeros(B, int))
    meta = {"source": source, "env": "darkroom", "horizon": HORIZON, "n_layer": 1, "n_head": 1}
    return build_record(ctx, patterns[None, :, None], np.zeros((B, 5)), meta)


def spread_row(T, peaks):
    """Query row of T keys: ``peaks`` (key -> mass), the rest spread evenly over the other keys."""
    row = np.zeros(T)
    others = [j for j in range(T) if j not in peaks]
    row[others] = (1 - sum(peaks.values())) / len(others)
    row[list(peaks)] = list(peaks.values())
    return row


RECENT = spread_row(20, {16: 0.2, 17: 0.2, 18: 0.3})  # 70% on the last 3 context keys
UNIFORM = np.full(20, 0.05)
PEAKED = spread_row(20, {3: 0.9})  # almost all on one distant key
MIXED = spread_row(20, {2: 0.25, 9: 0.25, 15: 0.2})


# ---------------------------------------------------------------- report and rules


def test_report_has_the_original_format_and_phrases():
    rec = hand_record([RECENT] * 6)
    text = report(rec, show=2)
    for phrase in ("ANALYZING LAYER 0\n================\n\nSample 1:\n  Sequence length: 20\n  Context tokens: 19\n"
                   "  Mean context attention: 0.0", "  Attention std dev: ", "  Max attention position: 18\n",
                   "  Recent/Distant ratio: ", "  Attention entropy: ", "Sample 2:",
                   "OVERALL ATTENTION STATISTICS", "Analyzed 6 samples", "Attention concentration (std): ",
                   "💡 INSIGHT: Strong recency bias detected!\n   Consider compressing or removing distant history.",
                   "Recommended compressor: RecencyCompressor (\"recency\"", "normalised entropy"):
        assert phrase in text, phrase
    assert "Sample 3:" not in text
    uniform = report(hand_record([UNIFORM] * 3))
    assert "💡 INSIGHT: High attention entropy (uniform distribution)!" in uniform
    assert "💡 INSIGHT: Attention is spread across history!" in uniform


def test_rollout_report_labels_timesteps_by_phase():
    rec = hand_record([UNIFORM] * 3, source="rollout")
    rec.samples["trajectory"][:] = 0
    rec.samples["decision"][:] = [60, 20, 40]
    text = report(rec)
    assert text.index("Timestep 20 (Early Exploration):") < text.index("Timestep 40 (Mid Exploration/Exploitation):")
    assert "Timestep 60 (Late Exploitation):" in text


@pytest.mark.parametrize("row, compressor, name, budget", [
    (RECENT, "RecencyCompressor", "recency", None),
    (UNIFORM, "UniformCompressor", "uniform", 9),
    (PEAKED, "AttentionBasedCompressor", "attention", None),
    (MIXED, "AdaptiveCompressor", "adaptive", 9),
])
def test_recommendation_rules(row, compressor, name, budget):
    (r,) = recommend(hand_record([row] * 4))
    assert (r.compressor, r.name) == (compressor, name)
    assert r.evidence["n_context"] == 19 and "head_rules" in r.evidence
    if compressor == "RecencyCompressor":
        # the context holds 0.7 + 16 x 0.3/17 = 0.982 of the row; 90% of it is 0.884: the last 3 keys (0.7)
        # and 0.184 more, 10.4 keys of 0.3/17 each: 3 + 11 = 14 kept
        assert r.budget == 14
    elif compressor == "AttentionBasedCompressor":
        assert r.budget == 1  # the one key holds > 90% of the context mass
    else:
        assert r.budget == budget


def test_entropy_rule_is_length_aware():
    # Uniform attention over 4 context keys: 1.39 nats, "peaked" under the original fixed 1.5 threshold.
    (r,) = recommend(hand_record([np.full(5, 0.2)] * 2))
    assert r.evidence["attention_entropy"] < 1.5
    assert r.compressor == "UniformCompressor" and "uniform" in r.insights


def test_budget_coverage_against_hand_counts():
    row = spread_row(20, {16: 0.25, 17: 0.25, 18: 0.3, 2: 0.1})  # the rest 0.00625 each, the query key included
    rewards = np.zeros((2, 20))
    rewards[:, 2] = 1.0  # the one rewarded context transition, far back
    cov = budget_coverage(hand_record([row] * 2, rewards), [3, 4, 50]).set_index(["budget", "keep", "kind"])["share"]
    context = 0.9 + 15 * 0.00625  # the 19 context keys' mass
    assert cov[3, "recency", "all"] == pytest.approx(0.8 / context)
    assert cov[3, "top-k", "all"] == pytest.approx(0.8 / context)
    assert cov[4, "recency", "all"] == pytest.approx(0.80625 / context)
    assert cov[4, "top-k", "all"] == pytest.approx(0.9 / context)
    assert (cov[3, "recency", "reward"], cov[4, "recency", "reward"], cov[4, "top-k", "reward"]) == (0.0, 0.0, 1.0)
    assert cov[4, "random", "reward"] == pytest.approx(4 / 19)
    assert cov[19, "recency", "all"] == pytest.approx(1.0)  # a budget beyond the context keeps all of it
    wide = coverage_table(budget_coverage(hand_record([row] * 2, rewards), [3, 4]))
    assert list(wide["budget"]) == [4, 3] and list(wide.columns[:3]) == ["layer", "budget", "random"]
    assert wide.loc[wide["budget"] == 4, "top-k: reward"].item() == 1.0


def test_episode_profile_by_episodes_back():
    T = 20
    row = np.zeros(T)
    row[[14, 15]] = 0.4  # positions 29, 30: the query's own episode (20..39) holds 80%
    row[3] = 0.1  # position 18: one episode back
    row[-1] = 0.1  # the query key itself is excluded
    profile = episode_profile(hand_record([row] * 2, start=15))
    np.testing.assert_allclose(profile, [[0.8, 0.1]], atol=1e-6)


# ---------------------------------------------------------------- the ablation check


class MarkerModel(torch.nn.Module):
    """Copies the action of the latest rewarded transition into every later decision's logits.

    The answer is known: the decision at the query depends on the one rewarded
    context transition and on nothing else.
    """

    def forward(self, states, actions, rewards, next_states, queries, positions=None, episode_return=None):
        B, L = actions.shape
        marked = torch.where(rewards > 0, torch.arange(L).expand(B, L), -1).cummax(1).values  # (B, L)
        copied = actions.long().gather(1, marked.clamp(min=0))
        logits = 6.0 * torch.nn.functional.one_hot(copied, 5).float()  # (B, L, 5)
        return logits * (marked >= 0)[..., None]


def marker_record(attend_to_marker: bool, B=24, T=16):
    g = np.random.default_rng(0)
    marker = g.integers(0, T - 1, B)  # one rewarded context transition per sample
    rewards = np.zeros((B, T))
    rewards[np.arange(B), marker] = 1
    peak = marker if attend_to_marker else (marker + 5) % (T - 1)
    rows = np.stack([spread_row(T, {int(p): 0.5}) for p in peak])
    return hand_record(rows, rewards)


def test_ablation_finds_the_transition_that_matters():
    res = ablation_check(MarkerModel(), marker_record(True), drop_counts=[1, 2, 4], n_random=4, loo_samples=8)
    assert res.kl["attention"][0] > 1.0  # dropping the marker makes the decision uniform
    assert res.kl["attention"][0] > 5 * res.kl["random"][0]
    assert res.agreement["attention"][0] < res.agreement["random"][0]
    assert np.nanmean(res.spearman["attention"]) > 0.99
    importance = np.asarray(res.importance)
    assert (importance > 1).sum(1).tolist() == [1] * 8  # leave-one-out: only the marker matters
    assert res.verdict.startswith("Attention predicts importance")


def test_ablation_says_plainly_when_attention_does_not_predict_importance():
    res = ablation_check(MarkerModel(), marker_record(False), drop_counts=[1, 2, 4], n_random=4, loo_samples=8)
    assert res.kl["attention"][0] < 1e-6  # the attended transition is irrelevant
    assert np.nanmean(res.spearman["attention"]) < 0.1
    assert res.verdict.startswith("Attention does NOT predict importance here")


def test_drop_tokens_keeps_order_and_original_positions():
    T = 6
    states = torch.arange(2 * T).view(1, T, 2).expand(2, T, 2)
    inputs = Tokens(states=states, actions=torch.arange(T).expand(2, T), rewards=torch.zeros(2, T),
                    next_states=states, queries=states, positions=torch.arange(100, 100 + T).expand(2, T),
                    episode_return=torch.zeros(2, T))
    out = drop_tokens(inputs, torch.tensor([[1, 3], [4, 0]]))
    assert out["actions"].tolist() == [[0, 2, 4, 5], [1, 2, 3, 5]]
    assert out["positions"].tolist() == [[100, 102, 104, 105], [101, 102, 103, 105]]
    assert out["states"][0, 1].tolist() == [4, 5]
    assert drop_tokens(inputs, torch.tensor([[1, 3], [4, 0]]), "renumber")["positions"].tolist() == [[0, 1, 2, 3]] * 2


def test_spearman_with_ties():
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    # ties get average ranks: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4)
    rx, ry = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman(np.array([5, 5, 7, 9]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(expected)
    assert np.isnan(spearman(np.ones(4), np.arange(4)))


def test_insights_written_as_markdown_and_json(tmp_path):
    ins = analyze(marker_record(True), MarkerModel(), drop_counts=[1, 2], n_random=2, loo_samples=4, budgets=[4, 2])
    md, js = write_insights(ins, tmp_path)
    data = json.loads(js.read_text())
    assert {(r["budget"], r["keep"]) for r in data["budget_coverage"]} == {
        (k, keep) for k in (4, 2) for keep in ("recency", "top-k", "random")}
    assert data["layers"][0]["compressor"] in ("RecencyCompressor", "UniformCompressor", "AttentionBasedCompressor",
                                               "AdaptiveCompressor")
    assert data["ablation"]["drop_counts"] == [1, 2] and data["thresholds"]["uniform_normalized_entropy"] == 0.85
    text = md.read_text()
    assert "| layer | compressor | name | budget |" in text and "Attention predicts importance" in text
    assert "ANALYZING LAYER 0" in text
    assert "## What a budget keeps of the attention" in text and "| recency: all | top-k: all |" in text
