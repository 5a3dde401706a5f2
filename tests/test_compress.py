"""Compressors: shared invariants over the registry, then each strategy's own rule."""

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adkit import compress as C

D = 3  # state width


def data(B, n, seed=0):
    """Unique-valued transitions: states[b, i, 0] = 1000 b + i encodes (row, index)."""
    code = (1000 * torch.arange(B)[:, None] + torch.arange(n)).float()  # (B, n)
    states = torch.stack([code, -code, code + 0.5], -1)  # (B, n, D)
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(B, n, generator=g) < 0.3).float() + code * 1e-6  # unique, ~30% rewarded
    return states, code.long(), rewards, states + 0.25


def peaked(B, n, hot, H=2, seed=0):
    """(B, H, T, T) pattern whose every query row puts ~all its mass on the keys hot[b]."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, H, n + 1, n + 1, generator=g) * 0.1
    for b, keys in enumerate(hot):
        logits[b, :, :, list(keys)] += 12.0
    return logits.softmax(-1)


def toy_policy(target):
    """Logits that depend only on transition target[b] of each row b (zero when it is dropped);
    keep's rows are h's rows repeated in place."""
    def policy(h, keep):
        b = (h.states[:, 0, 0].long() // 1000).repeat_interleave(keep.shape[0] // h.n_rows, 0)  # (B',)
        t = torch.tensor(target)[b % len(target)].clamp(max=h.n - 1)  # (B',)
        present = (keep == t[:, None]).any(-1, keepdim=True)  # (B', 1)
        return present * (t[:, None] + 1) * torch.tensor([0.1, -0.1])  # (B', 2)
    return policy


EXTRA = {
    "threshold": {"threshold": 0.05, "min_keep": 2},
    "best-episode": {"horizon": 5},
    "profile": {"rule": "heavy"},
    "oracle": {"policy": toy_policy([2, 5, 7])},
    "snapkv": {"window": 2, "pool": 1},
}
NAMES = list(C.COMPRESSORS)
NEEDS_ATTENTION = ["attention", "threshold", "adaptive", "h2o", "snapkv", "profile"]
SAMPLED = ["random", "exponential"]


def build(name, k, **kw):
    return C.make(name, k, **{**EXTRA.get(name, {}), **kw})


def decode(states):
    """(B, K, D) gathered states -> (row, index) of each kept transition."""
    code = states[..., 0].long()
    return code // 1000, code % 1000


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), n=st.integers(1, 20), k=st.integers(1, 20), seed=st.integers(0, 10))
def test_kept_are_real_chronological_and_k(name, B, n, k, seed):
    batch = data(B, n, seed)
    pattern = peaked(B, n, [[(b + seed) % n] for b in range(B)], seed=seed)
    k = max(k, 2) if name == "threshold" else k  # min_keep is 2
    c = build(name, k)
    idx = c.select(*batch, pattern)
    s, a, r, s2 = c.compress(*batch, pattern)
    row, i = decode(s)
    assert torch.equal(row, torch.arange(B)[:, None].expand_as(row)), "a transition moved rows"
    assert torch.equal(i, idx) and bool((i.diff(dim=1) > 0).all()), "not chronological"
    assert torch.equal(a, batch[1].gather(1, idx)) and torch.equal(r, batch[2].gather(1, idx))
    assert torch.equal(s2, s + 0.25)
    if name in ("none", "full"):
        assert idx.shape == (B, n)
    elif name == "threshold":
        assert min(n, 2) <= idx.shape[1] <= min(n, k)
    else:
        assert idx.shape == (B, min(n, k))


@pytest.mark.parametrize("name", NAMES)
def test_short_history_returned_unchanged_without_attention(name):
    batch = data(2, 2 if name == "threshold" else 5)
    out = build(name, 5).compress(*batch)
    assert all(o is b for o, b in zip(out, batch))
    assert torch.equal(build(name, 5).select(*batch), torch.arange(batch[1].shape[1]).expand(2, -1))


@pytest.mark.parametrize("name", NAMES)
def test_no_state_survives_a_call(name):
    """A selection depends on its own call only: another selection in between changes nothing."""
    c = build(name, 6)
    first = (data(4, 16), peaked(4, 16, [[1], [3], [5], [7]]))
    other = (data(4, 16, seed=5), peaked(4, 16, [[9], [2], [11], [0]], seed=5))
    pick = lambda batch, pattern: c.select(*batch, pattern, generator=torch.Generator().manual_seed(3))  # noqa: E731
    before = pick(*first)
    pick(*other)
    assert torch.equal(pick(*first), before)


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_seed_drives_selection(name):
    batch = data(4, 30)
    by_gen = lambda s: build(name, 6).select(*batch, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert not torch.equal(by_gen(0), by_gen(1))
    assert torch.equal(build(name, 6, seed=7).select(*batch), by_gen(7))
    assert not torch.equal(build(name, 6, seed=7).select(*batch), build(name, 6, seed=8).select(*batch))


@pytest.mark.parametrize("name", NEEDS_ATTENTION)
def test_attention_is_read_each_call_never_cached(name):
    batch = data(2, 16)
    A, B = peaked(2, 16, [[1, 3], [2, 4]]), peaked(2, 16, [[5, 6], [0, 7]])
    c = build(name, 6)
    first, second = c.select(*batch, A), c.select(*batch, B)
    assert torch.equal(second, build(name, 6).select(*batch, B))
    assert not torch.equal(first, second)
    for sel, hot in ((first, [[1, 3], [2, 4]]), (second, [[5, 6], [0, 7]])):
        for b in range(2):
            assert set(hot[b]) <= set(sel[b].tolist()), (name, b, sel[b])


@pytest.mark.parametrize("name", [n for n in NEEDS_ATTENTION if n != "threshold"])
def test_rows_are_selected_independently(name):
    batch = data(2, 16)
    hot = [[1, 3], [2, 4]]
    both = build(name, 6).select(*batch, peaked(2, 16, hot))
    assert not torch.equal(both[0], both[1])
    for b in range(2):
        alone = build(name, 6).select(*(t[b:b + 1] for t in batch), peaked(2, 16, hot)[b:b + 1])
        assert torch.equal(both[b:b + 1], alone)


@pytest.mark.parametrize("name", NEEDS_ATTENTION)
def test_needs_attention(name):
    with pytest.raises(ValueError, match="needs"):
        build(name, 6).select(*data(2, 16))


@pytest.mark.parametrize("name", ["attention", "threshold", "adaptive", "profile", "h2o", "snapkv"])
def test_pattern_forms_agree(name):
    batch = data(3, 12)
    pattern = torch.randn(3, 4, 13, 13, generator=torch.Generator().manual_seed(0)).mul(3).softmax(-1)  # (B, H, T, T)
    want = build(name, 5).select(*batch, pattern)
    assert torch.equal(build(name, 5).select(*batch, pattern.mean(1)), want)
    scores = {"h2o": pattern.mean(1)[:, :, :12].sum(1), "profile": pattern.mean(1)[:, :, :12].sum(1),
              "snapkv": pattern.mean(1)[:, -2:, :12].mean(1)}.get(name, pattern.mean(1)[:, -1, :12])
    assert torch.equal(build(name, 5).select(*batch, scores), want)


@pytest.mark.parametrize("attention", [torch.rand(2, 11), torch.rand(2, 12, 12), torch.rand(3, 13, 13),
                                       torch.rand(2, 4, 13, 12), torch.rand(2, 12, 2)])
def test_attention_shape_mismatch_names_shapes(attention):
    with pytest.raises(ValueError, match=r"attention of shape \(.*\) does not fit 2 rows of n=12"):
        C.AttentionBasedCompressor(4).select(*data(2, 12), attention)


def test_bad_inputs_raise():
    s, a, r, s2 = data(2, 12)
    with pytest.raises(ValueError, match="expected the four tensors"):
        C.RecencyCompressor(4).select(s, a[:, :5], r, s2)
    with pytest.raises(ValueError, match="positions of shape"):
        C.RecencyCompressor(4).select(s, a, r, s2, positions=torch.arange(5))
    with pytest.raises(ValueError, match="NaN"):
        C.AttentionBasedCompressor(4).select(s, a, r, s2, torch.full((2, 12), math.nan))


@pytest.mark.parametrize("factory, match", [
    (lambda: C.RecencyCompressor(0), "keep_recent must be an integer >= 1"),
    (lambda: C.UniformCompressor(2.5), "target_length must be an integer"),
    (lambda: C.AttentionBasedCompressor(-3), "target_length"),
    (lambda: C.ThresholdCompressor(0.0, 1, 4), r"threshold must lie in \(0, 1\]"),
    (lambda: C.ThresholdCompressor(1.5, 1, 4), "threshold"),
    (lambda: C.ThresholdCompressor(0.1, 5, 4), r"min_keep \(5\) must not exceed max_keep \(4\)"),
    (lambda: C.ThresholdCompressor(0.1, 0, 4), "min_keep"),
    (lambda: C.AdaptiveCompressor(4, entropy_threshold=0), "entropy_threshold"),
    (lambda: C.ExponentialDecayCompressor(4, 0.0), "decay_rate must be > 0"),
    (lambda: C.ExponentialDecayCompressor(4, -1.0), "decay_rate"),
    (lambda: C.SinkRecentCompressor(4, n_sink=-1), "n_sink must be an integer >= 0"),
    (lambda: C.HeavyHitterCompressor(4, recent_ratio=1.5), "recent_ratio"),
    (lambda: C.SnapKVCompressor(4, pool=2), "pool must be odd"),
    (lambda: C.SnapKVCompressor(4, window=0), "window"),
    (lambda: C.BestEpisodeCompressor(4, horizon=0), "horizon"),
    (lambda: C.ProfileCompressor(4, "sparse"), "rule must be one of"),
    (lambda: C.ProfileCompressor(4, "sink", size=-1), "size"),
    (lambda: C.ProfileCompressor.from_profile([], 4), "at least one"),
    (lambda: C.OracleCompressor(4, policy=None), "policy must be callable"),
    (lambda: C.make("lru", 4), "unknown compressor 'lru'; known: none, full, recency"),
])
def test_bad_arguments_raise(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_keep_top_breaks_ties_towards_recent_and_gather_shapes():
    assert C.keep_top(torch.tensor([[1.0, 2.0, 1.0, 1.0, 0.0]]), 2).tolist() == [[1, 3]]
    # dropping one (the evicting cache's step, no sort) drops the lowest, the oldest of tied lowest
    ties = torch.randint(0, 3, (200, 7), generator=torch.Generator().manual_seed(0)).float()
    for row, kept in zip(ties.tolist(), C.keep_top(ties, 6).tolist()):
        drop = min(range(7), key=lambda i: (row[i], i))
        assert kept == [i for i in range(7) if i != drop]
    s, a, r, s2 = data(2, 6)
    idx = torch.tensor([[0, 4], [1, 5]])
    gs, ga = C.gather(idx, s, a)
    assert gs.shape == (2, 2, D) and ga.tolist() == [[0, 4], [1001, 1005]]


def test_recency_and_uniform():
    batch = data(2, 10)
    assert C.RecencyCompressor(3).select(*batch).tolist() == [[7, 8, 9]] * 2
    for n, k in [(10, 4), (11, 3), (17, 16), (9, 1)]:
        kept = C.UniformCompressor(k).select(*data(1, n))[0]
        gaps = kept.diff()
        assert kept[-1] == n - 1 and (k == 1 or kept[0] == 0) and len(kept) == k
        assert k < 3 or int(gaps.max() - gaps.min()) <= 1


def test_threshold_one_length_per_batch_filled_with_next_highest():
    batch = data(2, 12)
    scores = torch.full((2, 12), 0.01)
    scores[0, [2, 9]] = torch.tensor([0.5, 0.4])
    scores[1, [1, 3, 5, 7]] = 0.2
    scores[0, 6] = 0.03  # row 0's next-highest fills its 3rd and 4th slots, then ties go recent
    kept = C.ThresholdCompressor(0.1, min_keep=1, max_keep=8).select(*batch, scores)
    assert kept.tolist() == [[2, 6, 9, 11], [1, 3, 5, 7]]
    assert C.ThresholdCompressor(0.1, min_keep=1, max_keep=3).select(*batch, scores).shape == (2, 3)
    assert C.ThresholdCompressor(0.9, min_keep=5, max_keep=8).select(*batch, scores).shape == (2, 5)


def test_adaptive_picks_per_row_mode():
    n, k = 16, 4
    recent = torch.linspace(0.1, 1.0, n) ** 4  # strong recency bias
    flat = torch.ones(n) + torch.linspace(0, 0.01, n).flip(0)  # high entropy, slight old bias
    sparse = torch.full((n,), 0.01).index_fill(0, torch.tensor([1, 5, 8, 12]), 1.0)
    scores = torch.stack([recent, flat, sparse]) / 10
    c = C.AdaptiveCompressor(k)
    assert c.modes(scores).tolist() == [0, 1, 2]
    assert c.select(*data(3, n), scores).tolist() == [[12, 13, 14, 15], [0, 5, 10, 15], [1, 5, 8, 12]]


def test_exponential_differs_per_row_and_favours_recent():
    batch = data(64, 40)
    kept = C.ExponentialDecayCompressor(8, 0.1, seed=1).select(*batch)
    assert len({tuple(row) for row in kept.tolist()}) > 32
    assert kept.float().mean() > 25  # uniform sampling would average 19.5
    assert C.ExponentialDecayCompressor(8, 50.0).select(*batch).tolist() == [list(range(32, 40))] * 64


def test_random_is_uniform_over_positions():
    kept = C.RandomCompressor(10, seed=2).select(*data(200, 40))
    counts = torch.bincount(kept.flatten(), minlength=40).float()  # expected 50 each
    assert counts.min() > 25 and counts.max() < 80 and abs(kept.float().mean() - 19.5) < 1.0


def test_sink_recent_and_reward_recent():
    batch = data(1, 20)
    assert C.SinkRecentCompressor(6, n_sink=2).select(*batch).tolist() == [[0, 1, 16, 17, 18, 19]]
    assert C.SinkRecentCompressor(3).select(*batch).tolist() == [[0, 1, 19]]  # sinks capped at K - 1
    s, a, r, s2 = batch
    r = torch.zeros_like(r).index_fill(1, torch.tensor([2, 5, 9]), 1.0)
    assert C.RewardRecentCompressor(5).select(s, a, r, s2).tolist() == [[2, 5, 9, 18, 19]]
    assert C.RewardRecentCompressor(2).select(s, a, r, s2).tolist() == [[5, 9]]


def test_h2o_keeps_heavy_hitters_and_recent_window():
    batch = data(1, 20)
    pattern = peaked(1, 20, [[3, 7]])
    assert C.HeavyHitterCompressor(5, recent_ratio=0.6).select(*batch, pattern).tolist() == [[3, 7, 17, 18, 19]]
    scores = torch.zeros(1, 20).index_fill(1, torch.tensor([3, 7, 8]), 1.0)  # (B, n) accumulated attention
    assert C.HeavyHitterCompressor(3, recent_ratio=0.0).select(*batch, scores).tolist() == [[3, 7, 8]]


def test_snapkv_uses_last_window_rows_pooled_and_keeps_window():
    n = 20
    pattern = torch.full((1, n + 1, n + 1), 0.01)
    pattern[0, :-3, 4] = 1.0  # only early queries attend to 4: outside a 3-row window
    pattern[0, -3:, 10] = 1.0
    pattern[0, -3:, 2] = 0.5
    pattern[0, :, 18:20] = 0.0  # the observation window's keys get no attention, yet are kept
    batch = data(1, n)
    assert C.SnapKVCompressor(3, window=3, pool=1).select(*batch, pattern).tolist() == [[10, 18, 19]]
    pooled = C.SnapKVCompressor(5, window=3, pool=3).select(*batch, pattern)[0].tolist()
    assert pooled == [9, 10, 11, 18, 19]


def test_best_episode_keeps_best_complete_and_current():
    s, a, _, s2 = data(2, 20)
    positions = torch.arange(3, 23)  # horizon 5: episodes 0 (partial: 3,4), 1, 2, 3, 4 (partial: 20..22)
    r = torch.zeros(2, 20)
    r[:, 0:2] = 5.0  # partial first episode has the highest sum: must be ignored
    r[0, 2:7] = 1.0  # row 0: episode 1 (indices 2..6) is best
    r[1, 12:14] = 2.0  # row 1: episode 3 (indices 12..16) is best
    kept = C.BestEpisodeCompressor(8, horizon=5).select(s, a, r, s2, positions=positions)
    assert kept.tolist() == [[2, 3, 4, 5, 6, 17, 18, 19], [12, 13, 14, 15, 16, 17, 18, 19]]
    trimmed = C.BestEpisodeCompressor(5, horizon=5).select(s, a, r, s2, positions=positions)
    assert trimmed.tolist() == [[4, 5, 6, 17, 18, 19][-5:], [15, 16, 17, 18, 19]]


def test_oracle_keeps_the_transition_the_policy_depends_on():
    batch = data(3, 10)
    for k in (1, 3):
        kept = C.OracleCompressor(k, toy_policy([2, 5, 7])).select(*batch)
        assert [2 in kept[0], 5 in kept[1], 7 in kept[2]] == [True] * 3, kept
    calls = []

    def counting(h, keep):
        calls.append(keep.shape)
        return toy_policy([2, 5, 7])(h, keep)

    C.OracleCompressor(6, counting).select(*batch)
    assert calls == [(3, 10)] + [(3 * m, m - 1) for m in range(10, 6, -1)]


def test_profile_rules_and_from_profile():
    s, a, _, s2 = data(2, 16)
    r = torch.zeros(2, 16).index_fill(1, torch.tensor([5, 9]), 1.0)  # rewarded at 5 and 9
    pattern = peaked(2, 16, [[1, 3], [2, 4]])  # every query attends to keys 1, 3 (row 0) and 2, 4 (row 1)
    kept = lambda rule, size=2: C.ProfileCompressor(6, rule, size).select(s, a, r, s2, pattern).tolist()  # noqa: E731
    assert kept("sink") == [[0, 1, 12, 13, 14, 15]] * 2  # 2 sinks + the 4 most recent
    assert kept("recent") == [[10, 11, 12, 13, 14, 15]] * 2
    assert kept("rewarded") == [[5, 9, 12, 13, 14, 15]] * 2  # both rewarded + the most recent
    assert kept("heavy") == [[1, 3, 12, 13, 14, 15], [2, 4, 12, 13, 14, 15]]  # 2 heavy hitters + recent
    full = kept("full", None)  # the budget binds even for "full" heads: half heavy hitters, half recent
    assert [len(row) for row in full] == [6, 6] and {1, 3, 13, 14, 15} <= set(full[0])
    records = [{"rule": "sink", "size": 2}, SimpleNamespace(rule="sink", size=4), {"rule": "heavy", "size": 3},
               SimpleNamespace(rule="sink", size=3)]
    p = C.ProfileCompressor.from_profile(records, 6)
    assert (p.rule, p.size) == ("sink", 3)


def test_make_sets_the_budget_argument():
    assert C.make("recency", 7).keep_recent == 7 and C.make("threshold", 9).max_keep == 9
    assert C.make("uniform", 5).target_length == 5


def test_the_original_constructor_names_are_aliases_of_budget():
    assert C.RecencyCompressor(keep_recent=4) == C.RecencyCompressor(budget=4) == C.RecencyCompressor(4)
    assert C.ThresholdCompressor(0.1, 2, 6) == C.ThresholdCompressor(threshold=0.1, min_keep=2, max_keep=6)
    assert C.ExponentialDecayCompressor(target_length=5, decay_rate=0.2).budget == 5
    with pytest.raises(ValueError, match="give the budget once"):
        C.UniformCompressor(budget=3, target_length=3)
    with pytest.raises(AttributeError):
        C.RecencyCompressor(3).target_length  # noqa: B018 (recency's alias is keep_recent)
    c = C.RecencyCompressor(8)
    c.keep_recent = 4  # the original attribute still sets what is kept
    assert c.budget == 4 and c.select(*data(1, 10)).tolist() == [[6, 7, 8, 9]]
    assert len({C.RecencyCompressor(4), C.RecencyCompressor(4), C.UniformCompressor(4)}) == 2  # hashable


def test_original_toolkit_shapes_one_hot_actions_and_trailing_rewards():
    """The original's integration point (DICP's AD.forward): actions one-hot (B, n, A), rewards (B, n, 1)."""
    s, a, r, s2 = data(2, 12)
    one_hot = torch.nn.functional.one_hot(a % 5, 5).float()  # (B, n, 5)
    r3 = torch.zeros(2, 12, 1).index_fill(1, torch.tensor([3, 7]), 1.0)  # (B, n, 1): rewarded at 3 and 7
    out = C.RewardRecentCompressor(4).compress(s, one_hot, r3, s2)
    assert [t.shape for t in out] == [(2, 4, D), (2, 4, 5), (2, 4, 1), (2, 4, D)]
    assert decode(out[0])[1].tolist() == [[3, 7, 10, 11]] * 2
    assert torch.equal(out[1], one_hot[:, [3, 7, 10, 11]]) and torch.equal(out[2], r3[:, [3, 7, 10, 11]])
    with pytest.raises(ValueError, match=r"\(B, n, \*\) with the same B and n"):
        C.RecencyCompressor(4).compress(s, one_hot[:, :5], r3, s2)


def test_demo_reports_each_strategy_on_the_original_shapes(capsys):
    C.demo(n=20, budget=6)
    out = capsys.readouterr().out
    assert "one-hot actions (4, 20, 5), rewards (4, 20, 1)" in out
    blocks = out.split("\n\n")[1:]  # one per registry entry
    assert [b.split("(")[1].split(")")[0] for b in blocks] == NAMES
    recency = blocks[NAMES.index("recency")]
    assert "Compressed length: 6" in recency and "Compression ratio: 0.30" in recency
    assert "Memory reduction: 70.0%" in recency and recency.endswith("[14, 15, 16, 17, 18, 19]")


def test_cache_attention_serves_the_next_call_only():
    """The original's integration: ``cache_attention(weights)`` then ``compress(...)`` without attention."""
    batch, pattern = data(2, 16), peaked(2, 16, [[3], [9]])
    c = C.AttentionBasedCompressor(target_length=1)
    c.cache_attention(pattern)
    assert c.select(*batch).tolist() == [[3], [9]]
    with pytest.raises(ValueError, match="needs attention"):
        c.select(*batch)  # dropped after one use: never a stale pattern
    c.cache_attention(peaked(2, 16, [[5], [5]]))
    assert c.select(*batch, peaked(2, 16, [[1], [2]])).tolist() == [[1], [2]]  # an explicit one wins
    assert c.select(*batch, pattern).tolist() == [[3], [9]] and c.compress(*batch, pattern)[1].shape == (2, 1)

