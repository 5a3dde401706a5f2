"""The AD transformer: reference numerics, cache equivalence, hooks and checkpoints."""

import json
import math

import pytest
import torch

from adkit.model import ADTransformer, CheckpointError, ModelConfig, load, save, window_mask


def batch(B=3, L=30, size=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(states=torch.randint(0, size, (B, L, 2), generator=g), actions=torch.randint(0, 5, (B, L), generator=g),
                rewards=torch.randint(0, 2, (B, L), generator=g).float(),
                next_states=torch.randint(0, size, (B, L, 2), generator=g),
                queries=torch.randint(0, size, (B, L, 2), generator=g))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ADTransformer(ModelConfig(n_transit=8, tf_n_embd=16, tf_n_layer=3, tf_n_head=2, tf_n_inner=32)).eval()


def reference_forward(m, b):
    """Plain re-implementation: explicit softmax attention with a sliding-window mask, no hooks."""
    B, L = b["actions"].shape
    x = m.embed(**b)
    pos = torch.arange(L, dtype=torch.float32)
    dh = m.cfg.tf_n_embd // m.cfg.tf_n_head
    inv = m.cfg.rope_base ** (-torch.arange(0, dh, 2).float() / dh)
    ang = pos[:, None] * inv  # (L, dh/2)

    def rope(t):  # (B, H, L, dh): rotate pairs (2i, 2i+1)
        out = t.clone()
        out[..., 0::2] = t[..., 0::2] * ang.cos() - t[..., 1::2] * ang.sin()
        out[..., 1::2] = t[..., 0::2] * ang.sin() + t[..., 1::2] * ang.cos()
        return out

    for blk in m.blocks:
        h = blk.ln_1(x)
        q, k, v = blk.attn.qkv(h).chunk(3, dim=-1)
        q, k, v = (t.view(B, L, m.cfg.tf_n_head, dh).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        allowed = torch.tensor([[0 <= i - j < m.cfg.n_transit for j in range(L)] for i in range(L)])
        att = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~allowed, float("-inf")).softmax(-1)
        x = x + blk.attn.proj((att @ v).transpose(1, 2).reshape(B, L, -1))
        x = x + blk.mlp(blk.ln_2(x))
    return m.head(m.ln_f(x))


def test_matches_reference_implementation(model):
    b = batch()
    torch.testing.assert_close(model(**b), reference_forward(model, b), atol=1e-5, rtol=1e-4)


def test_window_mask():
    # 4 queries are the last 4 of 6 keys (indices 2..5); each sees itself and the 2 keys before it
    assert window_mask(4, 6, 3).int().tolist() == [[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0],
                                                   [0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]


def test_fused_and_explicit_paths_agree_and_patterns_are_causal(model):
    b = batch()
    fused = model(**b)
    logits, cache = model.run_with_cache(**b, names="hook_pattern")
    torch.testing.assert_close(fused, logits, atol=1e-5, rtol=1e-5)
    pat = cache.stack("pattern")  # (layer, B, H, Q, K)
    assert pat.shape == (3, 3, 2, 30, 30)
    torch.testing.assert_close(pat.sum(-1), torch.ones(pat.shape[:-1]))
    assert (pat.triu(1) == 0).all()  # causal
    assert (pat[..., 20, :13] == 0).all()  # outside the 8-token window


def test_query_pattern_hook_gives_the_patterns_last_row_beside_the_fused_path(model):
    b = batch()
    rows = []
    with model.hooks([(lambda n: n.endswith("hook_query_pattern"), lambda row, hook: rows.append(row))]):
        fused = model(**b)
    assert torch.equal(fused, model(**b))  # the fused path ran: the same logits to the bit
    _, cache = model.run_with_cache(**b, names="hook_pattern")
    assert len(rows) == 3 and rows[0].shape == (3, 2, 1, 30)
    for layer, row in enumerate(rows):
        torch.testing.assert_close(row, cache["pattern", layer][:, :, -1:], atol=1e-6, rtol=1e-5)
    keep = torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(1)) < 0.5
    keep |= torch.eye(30, dtype=torch.bool)  # every query keeps itself
    rows.clear()
    with model.hooks([(lambda n: n.endswith("hook_query_pattern"), lambda row, hook: rows.append(row))]):
        model(**b, keep=keep)
    _, cache = model.run_with_cache(**b, keep=keep, names="hook_pattern")
    torch.testing.assert_close(rows[-1], cache["pattern", 2][:, :, -1:], atol=1e-6, rtol=1e-5)
    assert (rows[-1][:, :, 0] * ~keep[:, None, -1]).eq(0).all()  # a key the query may not see gets none


def test_query_pattern_hook_gives_the_last_rows_asked_for(model):
    b = batch()
    rows = []
    with model.hooks([("blocks.1.attn.hook_query_pattern", lambda row, hook: rows.append(row))]):
        model(**b, query_rows=5)
    _, cache = model.run_with_cache(**b, names="hook_pattern")
    assert rows[0].shape == (3, 2, 5, 30)
    torch.testing.assert_close(rows[0], cache["pattern", 1][:, :, -5:], atol=1e-6, rtol=1e-5)


def test_stop_after_ends_the_pass_and_the_block_there(model):
    seen, after = [], []
    with model.hooks([(lambda n: n.endswith("hook_resid_post"), lambda x, hook: seen.append(hook.name))],
                     stop_after="blocks.1.attn.hook_pattern"):
        model(**batch())
        after.append("ran")
    assert seen == ["blocks.0.hook_resid_post"] and after == []  # nothing past layer 1's pattern
    assert not model._hooked()  # every hook removed, the stop's too
    with pytest.raises(KeyError, match="no hook point 'blocks.9.attn.hook_pattern'"):
        with model.hooks([], stop_after="blocks.9.attn.hook_pattern"):
            pass


def test_query_pattern_hook_in_a_cached_step_is_that_decisions_attention(model):
    b = batch(L=12)
    cache = model.new_cache(3)
    fields = ("states", "actions", "rewards", "next_states", "queries")
    for t in range(11):
        model.step(cache, *(b[k][:, t] for k in fields))
    rows = []
    with model.hooks([("blocks.1.attn.hook_query_pattern", lambda row, hook: rows.append(row))]):
        model.step(cache, *(b[k][:, 11] for k in fields))
    _, full = model.run_with_cache(**b, names="hook_pattern")
    (row,) = rows  # (B, H, 1, window): the cache's slots, a ring
    torch.testing.assert_close(row.sort(-1).values, full["pattern", 1][:, :, -1:, 4:].sort(-1).values,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("episode_step", [False, True])
def test_kv_cache_rollout_equals_full_recompute(episode_step):
    torch.manual_seed(0)
    cfg = ModelConfig(n_transit=8, tf_n_embd=16, tf_n_layer=3, tf_n_head=2, tf_n_inner=32, episode_step=episode_step)
    model = ADTransformer(cfg).eval()
    b = batch(L=40)  # two Darkroom episodes: the step embedding wraps at 20
    full = model(**b)  # (B, L, A): every prefix recomputed under the same window
    cache = model.new_cache(3)
    steps = [model.step(cache, *(b[k][:, t] for k in ("states", "actions", "rewards", "next_states", "queries")))
             for t in range(40)]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert (torch.stack(steps, 1).argmax(-1) == full.argmax(-1)).all()


def test_hooks_are_removed_even_when_the_forward_raises(model):
    b = batch()

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([("blocks.0.attn.hook_pattern", boom)]):
            model(**b)
    assert not any(len(m._forward_hooks) for m in model.modules())
    with pytest.raises(KeyError, match="no hook point"):
        with model.hooks([("blocks.9.attn.hook_pattern", boom)]):
            pass


def test_hook_can_edit_activations(model):
    b = batch()

    def uniform(pattern, hook):
        keep = pattern > 0
        return keep / keep.sum(-1, keepdim=True)

    base = model(**b)
    with model.hooks([(lambda n: n.endswith("hook_pattern"), uniform)]):
        edited = model(**b)
    assert not torch.allclose(base, edited)


def test_episode_step_embeds_the_step_within_the_episode():
    torch.manual_seed(0)
    m = ADTransformer(ModelConfig(n_transit=8, tf_n_embd=16, tf_n_layer=1, tf_n_head=2, tf_n_inner=32,
                                  episode_step=True), "key-to-door").eval()
    b = batch(B=1, L=2)
    same = [m.embed(**b, positions=torch.tensor([[p, p + 1]])) for p in (3, 53)]  # one horizon (50) apart
    torch.testing.assert_close(*same)
    assert not torch.allclose(same[0], m.embed(**b, positions=torch.tensor([[4, 5]])))
    with pytest.raises(ValueError, match="episode_step.*renumber"):
        ADTransformer(m.cfg, "key-to-door", positions="renumber")


def test_checkpoint_round_trip_and_clear_errors(tmp_path, model):
    save(model, tmp_path)
    back = load(tmp_path)
    b = batch()
    torch.testing.assert_close(back(**b), model(**b))
    with pytest.raises(FileNotFoundError, match="adkit train"):
        load(tmp_path / "nowhere")
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load(tmp_path)
    save(model, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["model"]["tf_n_embd"] = 32
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an adkit model"):
        load(tmp_path)
