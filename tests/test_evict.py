"""The evicting key/value cache: a per-query keep mask computes exactly what the cache does, the
cache holds at most K, eviction is per row (and per layer and head for attention-scored strategies),
positions stay the original ones, bad budgets fail."""

import copy
import dataclasses

import pytest
import torch

from adkit.compress import make
from adkit.compress.evict import Evictor, keep_mask, kv_forms, set_shape
from adkit.compress.strategies import Transitions
from adkit.data.tokens import STEP_INPUTS, Tokens
from adkit.model import ADTransformer, ModelConfig

WINDOW, K, L = 8, 3, 30  # the model's window, the cache's budget, a stream longer than the window
PLAIN = ["recency", "sink-recent", "uniform", "random", "exponential", "reward-recent"]
SCORED = ["attention", "h2o", "snapkv", "adaptive"]
KW = {"sink-recent": {"n_sink": 1}, "snapkv": {"window": 2, "pool": 1}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(n_transit=WINDOW, tf_n_embd=16, tf_n_layer=3, tf_n_head=2, tf_n_inner=32,
                      episode_step=True, episode_return=True)
    return ADTransformer(cfg, "key-to-door").eval()


def stream(B=3, seed=0) -> Tokens:
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(B, L, generator=g) < 0.2).float()
    return Tokens(states=torch.randint(0, 9, (B, L, 2), generator=g), actions=torch.randint(0, 5, (B, L), generator=g),
                  rewards=rewards, next_states=torch.randint(0, 9, (B, L, 2), generator=g),
                  queries=torch.randint(0, 9, (B, L, 2), generator=g),
                  positions=torch.arange(L).expand(B, L), episode_return=rewards.cumsum(1).clamp_max(2))


def feed_pattern(*lead) -> torch.Tensor:
    """(*lead, L, L) causal row-stochastic scores, as a scorer's attention would be."""
    logits = torch.randn(*lead, L, L, generator=torch.Generator().manual_seed(1)) * 3
    return logits.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -torch.inf).softmax(-1)


PER_HEAD = (3, 3, 2)  # (B, n_layer, n_head) of the fixture's model


def evicting_rollout(model, tokens: Tokens, cache, after_step=None) -> torch.Tensor:
    """(B, L, A) logits of stepping ``tokens`` through ``cache`` one decision at a time."""
    out = []
    for p in range(tokens.length):
        out.append(model.step(cache, *(tokens[k][:, p] for k in STEP_INPUTS)))
        if after_step:
            after_step(cache)
    return torch.stack(out, 1)


@pytest.mark.parametrize("name,sets", [(n, None) for n in PLAIN + SCORED]
                         + [(n, s) for n in SCORED for s in ("stream", "layer", "head")])
def test_masked_forward_equals_the_evicting_rollout(model, name, sets):
    """Attention-scored strategies with a scorer's per-head pattern fed, for each kind of keep set
    (default: the strategy's own)."""
    tokens = stream()
    feed = feed_pattern(*PER_HEAD) if name in SCORED else None
    c = make(name, K, **KW.get(name, {}))
    cache = model.new_evicting_cache(3, c, feed=feed, generator=torch.Generator().manual_seed(5), sets=sets)
    rolled = evicting_rollout(model, tokens, cache)
    mask = keep_mask(c, tokens, WINDOW, feed=feed, generator=torch.Generator().manual_seed(5), sets=sets)
    shape = set_shape(sets or c.evict_sets, *PER_HEAD[1:])
    assert mask.shape == ((3, L, L) if shape == (1, 1) else (3, *shape, L, L))
    assert mask.sum(-1).max() == K + 1  # K cached + the query's own token
    torch.testing.assert_close(model(**tokens, keep=mask), rolled, atol=1e-5, rtol=0)


def test_one_set_per_stream_scores_with_the_layer_and_head_mean(model):
    """A pattern fed per layer and head, or already averaged, gives one set per stream the same keeps."""
    tokens, feed, c = stream(), feed_pattern(*PER_HEAD), make("attention", K)
    averaged = keep_mask(c, tokens, WINDOW, feed=feed.mean((1, 2)), sets="stream")
    assert torch.equal(keep_mask(c, tokens, WINDOW, feed=feed, sets="stream"), averaged)
    with pytest.raises(ValueError, match="keep sets per layer need the scores fed per layer and head"):
        keep_mask(c, tokens, WINDOW, feed=feed.mean((1, 2)))


@pytest.mark.parametrize("name,sets", [("attention", "layer"), ("adaptive", "layer"), ("h2o", "head"),
                                       ("snapkv", "head"), ("reward-recent", "stream")])
def test_each_strategy_keeps_the_sets_its_method_does(model, name, sets):
    """TOVA one set per layer (the heads' mean), H2O and SnapKV one per layer and head, attention-free
    strategies one per stream; each set holds at most K, and sets differ where their scores do."""
    tokens = stream()
    held = []
    cache = model.new_evicting_cache(3, make(name, K, **KW.get(name, {})))
    evicting_rollout(model, tokens, cache, lambda c: held.append(c.evictor.valid.sum(-1)))
    layers, heads = set_shape(sets, *PER_HEAD[1:])
    assert cache.evictor.index.shape == (3 * layers * heads, K + 1)  # stream x layer x head rows
    assert all(int(h.max()) <= K for h in held) and int(held[-1].min()) == K
    if name in ("attention", "snapkv"):  # scored by the query's (recent) attention: sets differ within a stream
        kept = cache.evictor.index.sort(-1).values[:, 1:].view(3, layers * heads, K)
        assert any(len({tuple(r) for r in row.tolist()}) > 1 for row in kept)
    with pytest.raises(ValueError, match=r"do not fit 3 streams"):
        model.new_evicting_cache(3, make("h2o", K), feed=feed_pattern(3))


def test_cache_never_holds_more_than_k_and_evicts_per_row(model):
    tokens = stream()
    held = []
    cache = model.new_evicting_cache(3, make("reward-recent", K))
    evicting_rollout(model, tokens, cache, lambda c: held.append(c.evictor.held()))
    assert held == [min(p + 1, K) for p in range(L)]
    assert cache.k[0].shape[2] == K + 1  # K kept + the deciding token's slot
    kept = cache.evictor.index.sort(-1).values[:, 1:]  # (B, K) tokens held after the last decision (one slot free)
    window = range(L - WINDOW + 1, L)  # what the next decision's window still holds
    for b in range(3):  # each row keeps its own most recent rewarded transitions, then its most recent others
        rewarded = [i for i in window if tokens["rewards"][b, i] > 0][-K:]
        others = [i for i in window if tokens["rewards"][b, i] == 0]
        fill = K - len(rewarded)
        assert kept[b].tolist() == sorted(rewarded + (others[-fill:] if fill else []))
    assert len({tuple(r) for r in kept.tolist()}) > 1


def test_recency_keeps_original_positions(model):
    """Recency with K is a sliding window of K + 1 at the stream's own positions: the same weights
    with n_transit = K + 1 compute it, over the whole stream."""
    tokens = stream()
    rolled = evicting_rollout(model, tokens, model.new_evicting_cache(3, make("recency", K)))
    short = copy.deepcopy(model)
    short.cfg = dataclasses.replace(model.cfg, n_transit=K + 1)
    torch.testing.assert_close(short(**tokens), rolled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["h2o", "random", "sink-recent"])
def test_a_budget_of_the_whole_window_is_the_rolling_cache(model, name):
    tokens = stream()
    rolled = evicting_rollout(model, tokens, model.new_evicting_cache(3, make(name, WINDOW - 1)))
    full = evicting_rollout(model, tokens, model.new_cache(3))
    torch.testing.assert_close(rolled, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sets", ["layer", "head", "stream"])
def test_tova_evicts_the_entry_the_deciding_query_attends_to_least(model, sets):
    tokens = stream()
    cache = model.new_evicting_cache(3, make("attention", K), sets=sets)
    for p in range(K):  # fill the cache
        model.step(cache, *(tokens[k][:, p] for k in STEP_INPUTS))
    patterns = []
    with model.hooks([(lambda n: n.endswith("hook_pattern"), lambda a, hook: patterns.append(a))]):
        before = cache.evictor.index.clone()
        model.step(cache, *(tokens[k][:, K] for k in STEP_INPUTS))
    pattern = torch.stack(patterns, 1)[:, :, :, 0]  # (B, layer, head, K + 1)
    # each set's least-attended slot, by the mean over the layers and heads the set serves
    mean = {"head": pattern, "layer": pattern.mean(2), "stream": pattern.mean((1, 2))}[sets]
    least = mean.reshape(-1, K + 1).argmin(-1)  # (rows,)
    assert (before >= 0).sum().item() == len(least) * K
    assert torch.where(cache.evictor.index < 0)[1].tolist() == least.tolist()  # the one free slot per row


@pytest.mark.parametrize("budget", [WINDOW, WINDOW + 5])
def test_budget_above_the_window_fails(model, budget):
    with pytest.raises(ValueError, match=f"keeps 1..{WINDOW - 1} transitions"):
        model.new_evicting_cache(2, make("recency", budget))


def test_zero_budget_and_strategies_without_an_eviction_form_fail(model):
    with pytest.raises(ValueError, match="must be an integer >= 1, got 0"):
        make("recency", 0)
    for name, match in [("threshold", "varies per decision"), ("best-episode", "whole past episodes"),
                        ("oracle", "re-running the model")]:
        kw = {"horizon": 50} if name == "best-episode" else {"policy": print} if name == "oracle" else {}
        with pytest.raises(ValueError, match=match):
            Evictor(make(name, K, **kw), 2, WINDOW)


def test_strategies_without_an_eviction_form_are_only_reencoded():
    assert kv_forms("recency", ["reencode", "evict"]) == ["reencode", "evict"]
    assert kv_forms("h2o", ["evict"]) == ["evict"]
    assert kv_forms("best-episode", ["reencode", "evict"]) == ["reencode"]
    assert kv_forms("threshold", ["evict"]) == []


def test_replaying_attention_scores_needs_them_fed():
    with pytest.raises(ValueError, match="needs the scores fed"):
        keep_mask(make("h2o", K), stream(), WINDOW)


def renumbered(n_layer: int) -> ADTransformer:
    torch.manual_seed(2)
    cfg = ModelConfig(n_transit=WINDOW, tf_n_embd=16, tf_n_layer=n_layer, tf_n_head=2, tf_n_inner=32)
    return ADTransformer(cfg, "key-to-door", positions="renumber").eval()


@pytest.mark.parametrize("name", ["random", "reward-recent", "attention"])
def test_renumbered_models_read_the_held_transitions_numbered_0_to_k(name):
    """One layer (so cached keys and values depend on their token alone): each decision equals the model
    re-encoding what the cache holds, numbered 0..K - 1 in order, the decision's token K."""
    m, tokens = renumbered(1), stream()
    cache = m.new_evicting_cache(3, make(name, K), generator=torch.Generator().manual_seed(5), sets="stream")
    for p in range(L):
        held = cache.evictor.index.masked_fill(~cache.evictor.valid, L).sort(-1).values[:, :min(p, K)]  # (B, ·)
        context = tokens.gather(torch.cat([held, torch.full((3, 1), p)], 1), renumber=True)
        step = m.step(cache, *(tokens[k][:, p] for k in STEP_INPUTS))
        assert context["positions"][0].tolist() == list(range(min(p, K) + 1))
        torch.testing.assert_close(step, m(**context)[:, -1], atol=1e-5, rtol=0)


def test_renumbered_recency_is_the_original_sliding_window():
    """Recency holds consecutive transitions, so numbering them 0..K keeps their offsets: through 3
    layers the renumbered cache computes what the same weights compute at the stream's own positions."""
    m, tokens = renumbered(3), stream()
    original = copy.deepcopy(m)
    original.positions = "original"
    rolled = evicting_rollout(m, tokens, m.new_evicting_cache(3, make("recency", K)))
    torch.testing.assert_close(rolled, evicting_rollout(original, tokens, original.new_evicting_cache(
        3, make("recency", K))), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SCORED + ["profile"])
def test_strategies_read_only_the_fields_they_declare(name):
    """An evicting cache hands fields outside ``evict_fields`` over as zeros (attention-scored
    strategies read none): their scores must not change."""
    c = make(name, K, **{**KW.get(name, {}), **({"rule": "full"} if name == "profile" else {})})
    assert c.evict_fields == ()
    t = stream()
    fields = {f: t[f][:, :K + 1] for f in ("states", "actions", "rewards", "next_states", "positions")}
    scores = feed_pattern(3)[:, -1, :K + 1]
    build = lambda f: Transitions.build(name, f["states"], f["actions"], f["rewards"], f["next_states"],  # noqa: E731
                                        scores, f["positions"], torch.Generator().manual_seed(2), None)
    zeroed = {f: v if f in c.evict_fields else torch.zeros_like(v) for f, v in fields.items()}
    torch.testing.assert_close(c.evict_score(build(zeroed), K), c.evict_score(build(fields), K))


@pytest.mark.parametrize("sets", ["head", "layer", "stream"])
def test_a_one_layer_model_evicts_per_head_too(sets):
    torch.manual_seed(1)
    one = ADTransformer(ModelConfig(n_transit=WINDOW, tf_n_embd=16, tf_n_layer=1, tf_n_head=2, tf_n_inner=32),
                        "key-to-door").eval()
    tokens, c = stream(), make("h2o", K)
    cache = one.new_evicting_cache(3, c, sets=sets)  # scored by its own attention
    evicting_rollout(one, tokens, cache)
    assert cache.evictor.valid.sum(-1).tolist() == [K] * 3 * (2 if sets == "head" else 1)
    feed = feed_pattern(3, 1, 2)
    mask = keep_mask(c, tokens, WINDOW, feed=feed, sets=sets)
    fed = evicting_rollout(one, tokens, one.new_evicting_cache(3, c, feed=feed, sets=sets))
    torch.testing.assert_close(one(**tokens, keep=mask), fed, atol=1e-5, rtol=0)
