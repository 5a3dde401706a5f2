"""adkit.metrics against hand-computed values, edge cases and random softmax rows."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adkit.metrics import (
    STAT_KEYS,
    HeadProfile,
    attention_rollout,
    attention_stats,
    batched_attention_stats,
    episode_mass,
    event_mass,
    head_profile,
    information_events,
    mean_attention_distance,
    normalized_entropy,
    rewarded_mass,
    sink_mass,
    stats_table,
)

QUERY_ROW = [0.1, 0.2, 0.05, 0.4, 0.25]  # context keys 0..3, query key 4


def pattern_with_query_row(row) -> np.ndarray:
    """A causal (T, T) pattern whose last row is ``row``; earlier rows uniform over their keys."""
    T = len(row)
    pattern = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # (T, T) causal uniform
    pattern[-1] = row
    return pattern


def patterns_from_rows(rows) -> np.ndarray:
    """Patterns ``(..., T, T)`` whose every row is the given query row ``(..., T)`` (a view)."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.broadcast_to(rows[..., None, :], (*rows.shape, rows.shape[-1]))


def spread(T: int, peaks: dict[int, float]) -> np.ndarray:
    """Query row of length T: ``peaks`` (key -> mass), the rest spread evenly over other keys."""
    row = np.zeros(T)
    others = [j for j in range(T) if j not in peaks]
    row[others] = (1.0 - sum(peaks.values())) / len(others)
    row[list(peaks)] = list(peaks.values())
    return row


def entropy(ps) -> float:
    return -sum(p * math.log(p) for p in ps if p > 0)


# ---------------------------------------------------------------- attention_stats


def test_attention_stats_hand_built_pattern():
    stats = attention_stats(pattern_with_query_row(QUERY_ROW))
    assert set(stats) == set(STAT_KEYS)
    # context (0.1, 0.2, 0.05, 0.4): sum 0.75, deviations from 0.1875 squared sum to 0.071875
    assert stats["mean_context_attention"] == pytest.approx(0.1875)
    assert stats["std_context_attention"] == pytest.approx(math.sqrt(0.071875 / 4))
    assert stats["max_context_attention"] == pytest.approx(0.4)
    assert stats["max_context_position"] == 3 and isinstance(stats["max_context_position"], int)
    assert stats["attention_to_query"] == pytest.approx(0.25)
    assert stats["recent_attention"] == pytest.approx(0.4)  # n // 4 = 1 key each side
    assert stats["distant_attention"] == pytest.approx(0.1)
    assert stats["recent_to_distant_ratio"] == pytest.approx(4.0)
    assert stats["attention_entropy"] == pytest.approx(entropy([0.1, 0.2, 0.05, 0.4]))
    assert all(isinstance(v, (float, int)) for v in stats.values())


def test_recent_and_distant_average_a_quarter_of_the_context():
    row = [0.2, 0.1, 0.0] + [0.03] * 6 + [0.1, 0.1, 0.25] + [0.07]  # n = 12 -> 3 keys each side
    stats = attention_stats(pattern_with_query_row(row))
    assert stats["distant_attention"] == pytest.approx(0.1)
    assert stats["recent_attention"] == pytest.approx(0.15)
    assert stats["recent_to_distant_ratio"] == pytest.approx(1.5)


def test_n_context_uses_the_keys_just_before_the_query():
    stats = attention_stats(pattern_with_query_row(QUERY_ROW), n_context=2)  # context (0.05, 0.4)
    assert stats["mean_context_attention"] == pytest.approx(0.225)
    assert stats["std_context_attention"] == pytest.approx(0.175)
    assert stats["max_context_position"] == 1
    assert stats["attention_to_query"] == pytest.approx(0.25)
    assert stats["recent_to_distant_ratio"] == pytest.approx(8.0)
    assert stats["attention_entropy"] == pytest.approx(entropy([0.05, 0.4]))


def test_per_head_input_equals_a_loop_of_2d_calls():
    rng = np.random.default_rng(0)
    heads = torch.softmax(torch.from_numpy(rng.normal(size=(3, 6, 6))), -1).numpy()  # (H, T, T)
    stats = attention_stats(heads)
    for key in STAT_KEYS:
        assert stats[key].shape == (3,)
        expected = [attention_stats(heads[h])[key] for h in range(3)]
        np.testing.assert_allclose(stats[key], expected, rtol=1e-12)


def test_torch_and_numpy_inputs_agree():
    pattern = pattern_with_query_row(QUERY_ROW)
    from_numpy = attention_stats(pattern)
    for tensor in (torch.tensor(pattern), torch.tensor(pattern, dtype=torch.float32)):
        from_torch = attention_stats(tensor)
        for key in STAT_KEYS:
            assert from_torch[key] == pytest.approx(from_numpy[key], rel=1e-6)


def test_batched_stats_keep_leading_dims():
    rng = np.random.default_rng(1)
    patterns = rng.dirichlet(np.ones(7), size=(2, 3, 7))  # (B, H, T, T)
    stats = batched_attention_stats(patterns)
    assert stats["attention_entropy"].shape == (2, 3)
    np.testing.assert_allclose(stats["attention_entropy"][1], attention_stats(patterns[1])["attention_entropy"])


def test_context_of_one_key():
    stats = attention_stats(np.array([[1.0, 0.0], [0.3, 0.7]]))
    assert stats["mean_context_attention"] == pytest.approx(0.3)
    assert stats["std_context_attention"] == 0.0
    assert stats["max_context_position"] == 0
    assert stats["attention_to_query"] == pytest.approx(0.7)
    assert stats["recent_attention"] == stats["distant_attention"] == pytest.approx(0.3)
    assert stats["recent_to_distant_ratio"] == pytest.approx(1.0)
    assert stats["attention_entropy"] == pytest.approx(entropy([0.3]))


def test_row_concentrated_on_one_key():
    stats = attention_stats(pattern_with_query_row([0.0, 0.0, 1.0, 0.0, 0.0]))
    assert stats["attention_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert stats["max_context_position"] == 2
    assert stats["max_context_attention"] == 1.0


@pytest.mark.parametrize("T", [2, 5, 20])
def test_all_equal_weights(T):
    stats = attention_stats(np.full((T, T), 1.0 / T))
    # each of the T-1 context keys holds 1/T: -(T-1) (1/T) ln(1/T) = (T-1)/T ln T
    assert stats["attention_entropy"] == pytest.approx((T - 1) / T * math.log(T), rel=1e-8)
    assert stats["std_context_attention"] == pytest.approx(0.0, abs=1e-15)
    assert stats["recent_to_distant_ratio"] == pytest.approx(1.0)


def test_recent_and_distant_with_fewer_than_four_context_keys():
    stats = attention_stats(pattern_with_query_row([0.5, 0.1, 0.2, 0.2]))  # n = 3 -> 1 key each side
    assert stats["recent_attention"] == pytest.approx(0.2)
    assert stats["distant_attention"] == pytest.approx(0.5)
    assert stats["recent_to_distant_ratio"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    "shape, n_context, message",
    [
        ((3, 4), None, "square"),
        ((1, 1), None, "T >= 2"),
        ((5,), None, "expects a pattern of shape"),
        ((2, 3, 5, 5), None, "expects a pattern of shape"),
        ((5, 5), 0, "n_context must be in 1..4"),
        ((5, 5), 5, "n_context must be in 1..4"),
    ],
)
def test_bad_shapes_raise(shape, n_context, message):
    with pytest.raises(ValueError, match=message):
        attention_stats(np.ones(shape), n_context=n_context)


# ---------------------------------------------------------------- length-aware additions


@pytest.mark.parametrize("T", [3, 5, 80])
def test_normalized_entropy_is_one_for_uniform_context(T):
    row = np.full(T, 0.5 / (T - 1))
    row[-1] = 0.5  # the query's share does not matter after renormalising
    assert normalized_entropy(row) == pytest.approx(1.0)


def test_normalized_entropy_edge_values_and_range():
    assert normalized_entropy([0.0, 1.0, 0.0, 0.0]) == 0.0
    assert normalized_entropy([0.4, 0.6]) == 0.0  # a single context key
    assert normalized_entropy([0.0, 0.0, 1.0]) == 0.0  # no context mass at all
    # context (0.5, 0.5, 0) renormalised: ln 2 / ln 3
    assert normalized_entropy([0.25, 0.25, 0.0, 0.5]) == pytest.approx(math.log(2) / math.log(3))
    rows = np.random.default_rng(2).dirichlet(np.ones(10) * 0.3, size=(4, 50))  # (4, 50, T)
    values = normalized_entropy(rows)
    assert values.shape == (4, 50) and (values >= 0).all() and (values <= 1 + 1e-12).all()


def test_mean_attention_distance():
    row = [0.5, 0.0, 0.25, 0.25]  # distances 3, 2, 1, 0
    assert mean_attention_distance(row) == pytest.approx(1.75)
    assert mean_attention_distance(row, normalize=True) == pytest.approx(1.75 / 3)
    assert mean_attention_distance(torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2)).tolist() == [0.0, 0.0]


def test_sink_mass_reads_key_zero():
    rows = np.array([[0.7, 0.1, 0.2], [0.0, 0.5, 0.5]])
    np.testing.assert_allclose(sink_mass(rows), [0.7, 0.0])


def test_episode_mass_orders_episodes_oldest_first():
    row = [0.1, 0.1, 0.2, 0.1, 0.3, 0.1, 0.1]
    np.testing.assert_allclose(episode_mass(row, [0, 0, 1, 1, 2, 2]), [0.2, 0.3, 0.4])
    np.testing.assert_allclose(episode_mass(row, [7, 7, 2, 2, 9, 9]), [0.2, 0.3, 0.4])  # by first appearance
    rows = np.tile(row, (2, 3, 1))  # (B, H, T)
    assert episode_mass(rows, np.arange(6) // 3).shape == (2, 3, 2)
    with pytest.raises(ValueError, match=r"episode_ids must have shape \(6,\)"):
        episode_mass(row, [0, 0, 1])


def test_rewarded_mass():
    row = [0.1, 0.2, 0.05, 0.3, 0.15, 0.1, 0.1]
    assert rewarded_mass(row, [0, 1, 0, 0.5, -1, 0]) == pytest.approx(0.5)
    per_sample = rewarded_mass(np.tile(row, (2, 1)), [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]])
    np.testing.assert_allclose(per_sample, [0.1, 0.1])
    with pytest.raises(ValueError, match="last dim of 6"):
        rewarded_mass(row, [1, 0])


def test_information_events_tell_key_from_door():
    # two contexts of 9 transitions: steps within episodes, rewards
    step = [[3, 4, 0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 0, 1, 2, 3, 4, 0]]
    paid = [[1, 0, 0, 0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 1, 0, 0, 0, 1]]
    ev = information_events("key-to-door", paid, step)
    # row 0: the reward at 0 is in a cut episode with nothing before it: key or door, unknown
    assert ev["key"][0].nonzero()[0].tolist() == [4] and ev["door"][0].nonzero()[0].tolist() == [6]
    # row 1: the first episode is whole (starts at step 0): its reward is the key
    assert ev["key"][1].nonzero()[0].tolist() == [1, 3, 8] and ev["door"][1].nonzero()[0].tolist() == [4]
    assert (ev["reward"] == (np.array(paid) > 0)).all()
    assert set(information_events("darkroom-hard", paid, step)) == {"reward"}
    row = np.full(10, 0.1)
    assert event_mass(row, ev["key"][1]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="last dim of 9"):
        event_mass(row, [True])


# ---------------------------------------------------------------- rollout


ROLLOUT_HEADS = np.array(  # (L=2, H=2, T=3, T=3); head means A0, A1 below
    [
        [[[1, 0, 0], [1, 0, 0], [0.4, 0, 0.6]], [[1, 0, 0], [0, 1, 0], [0, 0.4, 0.6]]],
        [[[1, 0, 0], [0.4, 0.6, 0], [0.8, 0, 0.2]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]],
    ]
)


def test_attention_rollout_two_layer_hand_case():
    # A0 = [[1,0,0],[.5,.5,0],[.2,.2,.6]] -> A0' = [[1,0,0],[.25,.75,0],[.1,.1,.8]]
    # A1 = [[1,0,0],[.2,.8,0],[.4,0,.6]]  -> A1' = [[1,0,0],[.1,.9,0],[.2,0,.8]]
    expected = [[1, 0, 0], [0.325, 0.675, 0], [0.28, 0.08, 0.64]]  # A1' @ A0'
    np.testing.assert_allclose(attention_rollout(ROLLOUT_HEADS), expected, atol=1e-12)
    plain = [[1, 0, 0], [0.6, 0.4, 0], [0.52, 0.12, 0.36]]  # A1 @ A0
    np.testing.assert_allclose(attention_rollout(torch.tensor(ROLLOUT_HEADS), add_residual=False), plain, atol=1e-12)
    unnormalised = 2 * ROLLOUT_HEADS  # rows sum to 2: renormalised per layer
    np.testing.assert_allclose(attention_rollout(unnormalised, add_residual=False), plain, atol=1e-12)


def test_attention_rollout_batched_and_shape_errors():
    batched = np.stack([ROLLOUT_HEADS, ROLLOUT_HEADS[:, ::-1]], axis=1)  # (L, B=2, H, T, T)
    rollout = attention_rollout(batched)
    assert rollout.shape == (2, 3, 3)
    np.testing.assert_allclose(rollout[0], rollout[1])  # head order does not matter
    with pytest.raises(ValueError, match=r"\(L, H, T, T\) or \(L, B, H, T, T\)"):
        attention_rollout(ROLLOUT_HEADS[0])


# ---------------------------------------------------------------- head_profile

T_PROFILE = 20  # 19 context keys; default budgets 1..9
PROFILE_ROWS = {
    "sink": spread(T_PROFILE, {0: 0.6, 19: 0.38}),
    "recent": spread(T_PROFILE, {16: 0.2, 17: 0.3, 18: 0.4, 19: 0.08}),
    "sparse": spread(T_PROFILE, {4: 0.9, 19: 0.07}),
    "uniform": np.full(T_PROFILE, 1 / T_PROFILE),
    "rewarded": spread(T_PROFILE, {5: 0.45, 11: 0.45, 19: 0.07}),
}
PROFILE_HEADS = patterns_from_rows(list(PROFILE_ROWS.values()))  # (H=5, T, T)
REWARDS = np.isin(np.arange(T_PROFILE - 1), [5, 11]).astype(float)  # (T-1,)


def test_head_profile_picks_the_cheapest_rule():
    rules = [(p.rule, p.size) for p in head_profile(PROFILE_HEADS, rewards=REWARDS)]
    assert rules == [("sink", 1), ("recent", 3), ("heavy", 1), ("full", 19), ("rewarded", 2)]
    profiles = head_profile(PROFILE_HEADS)
    assert profiles[0] == HeadProfile(0, "sink", 1, pytest.approx(0.98))
    assert profiles[1].mass == pytest.approx(0.98)
    assert (profiles[4].rule, profiles[4].size) == ("heavy", 2)  # no rewards given
    assert head_profile(0.5 * PROFILE_HEADS) == profiles  # masses are fractions of the row's total


def test_head_profile_windows_are_the_budgets():
    recent_head = PROFILE_HEADS[1:2]
    assert (head_profile(recent_head, windows=(2, 4))[0].size) == 4
    assert head_profile(recent_head, windows=(1, 2))[0] == HeadProfile(0, "full", 19, 1.0)


def test_head_profile_never_exceeds_the_largest_budget():
    uniform = PROFILE_HEADS[3:4]
    almost_all = np.ones(T_PROFILE - 1)
    almost_all[0] = 0.0  # 18 rewarded keys + query recover 0.95, but 18 > 9 keys
    assert head_profile(uniform, rewards=almost_all) == [HeadProfile(0, "full", 19, 1.0)]
    assert head_profile(patterns_from_rows([[0.5, 0.5]])) == [HeadProfile(0, "full", 1, 1.0)]  # nothing to cut
    assert head_profile(uniform, windows=(4, 19, 64)) == [HeadProfile(0, "full", 19, 1.0)]  # 19, 64 keep all


def test_head_profile_averages_the_batch():
    rows = np.zeros((2, 1, T_PROFILE))  # (B, H, T): each sample on a different key
    rows[0, 0, [4, -1]] = rows[1, 0, [10, -1]] = [0.95, 0.05]
    patterns = patterns_from_rows(rows)  # (B, H, T, T)
    assert [(p.rule, p.size) for p in head_profile(patterns[:1])] == [("heavy", 1)]
    assert [(p.rule, p.size) for p in head_profile(patterns)] == [("heavy", 2)]
    per_sample = np.zeros((2, T_PROFILE - 1))
    per_sample[0, 4] = per_sample[1, 10] = 1.0
    assert head_profile(patterns, rewards=per_sample) == [HeadProfile(0, "rewarded", 1, pytest.approx(1.0))]
    per_sample[1] = per_sample[0]  # sample 1's rewarded key holds none of its mass: mean 0.525
    assert [(p.rule, p.size) for p in head_profile(patterns, rewards=per_sample)] == [("heavy", 2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": 1.5}, "target must be in"),
        ({"windows": (0, 3)}, "windows must be positive"),
        ({"rewards": np.zeros((3, T_PROFILE - 1))}, r"rewards must be \(T-1,\) or \(B, T-1\)"),
    ],
)
def test_head_profile_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        head_profile(PROFILE_HEADS, **kwargs)


def test_head_profile_rejects_a_head_averaged_pattern():
    with pytest.raises(ValueError, match=r"\(H, T, T\) or \(B, H, T, T\)"):
        head_profile(PROFILE_HEADS[0])


# ---------------------------------------------------------------- stats_table


def test_stats_table_rows_match_attention_stats():
    rows = np.random.default_rng(3).dirichlet(np.ones(9), size=(2, 3, 4))  # (L, B, H, T)
    table = stats_table(patterns_from_rows(rows))
    assert len(table) == 2 * 3 * 4
    entry = table[(1 * 3 + 2) * 4 + 3]  # layer-major order
    assert (entry["layer"], entry["sample"], entry["head"]) == (1, 2, 3)
    expected = attention_stats(patterns_from_rows(rows[1, 2, 3]))
    assert {key: entry[key] for key in STAT_KEYS} == pytest.approx(expected)
    assert entry["normalized_entropy"] == pytest.approx(normalized_entropy(rows[1, 2, 3]))
    assert entry["mean_attention_distance"] == pytest.approx(mean_attention_distance(rows[1, 2, 3]))
    assert entry["sink_mass"] == rows[1, 2, 3, 0]


def test_stats_table_covers_a_full_grid_once_per_layer_sample_and_head():
    """Its speed is a benchmark (benchmarks/bench_attention.py), not a test; here, what it holds."""
    logits = np.random.default_rng(4).normal(size=(4, 1000, 4, 80)).astype(np.float32)  # (L, B, H, T)
    rows = torch.softmax(torch.from_numpy(logits), -1).numpy()
    table = stats_table(patterns_from_rows(rows))  # (L, B, H, T, T) view
    assert len(table) == 16_000
    assert len({(e["layer"], e["sample"], e["head"]) for e in table}) == 16_000
    entry = next(e for e in table if (e["layer"], e["sample"], e["head"]) == (3, 777, 2))
    expected = attention_stats(patterns_from_rows(rows[3, 777, 2]))
    assert {key: entry[key] for key in STAT_KEYS} == pytest.approx(expected)


# ---------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(2, 40), elements=st.floats(-30, 30)))
def test_random_softmax_rows(logits):
    row = np.exp(logits - logits.max())
    row /= row.sum()
    stats = attention_stats(patterns_from_rows(row))
    n = len(row) - 1
    assert stats["mean_context_attention"] * n == pytest.approx(row[:-1].sum(), rel=1e-9, abs=1e-15)
    assert math.isfinite(stats["attention_entropy"]) and stats["attention_entropy"] >= -1e-9
    assert 0.0 <= normalized_entropy(row) <= 1.0 + 1e-12
    assert stats["recent_to_distant_ratio"] >= 0.0
    assert 0 <= stats["max_context_position"] < n
