"""Cost measures: peak memory from allocation events, and FLOPs checked against torch's own counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adkit.compress import make
from adkit.compress.context import attention_for, scoring_rows
from adkit.compress.cost import decision_flops, forward_flops, peak_allocated_mb, scoring_flops
from adkit.model import ADTransformer, ModelConfig

CFG = ModelConfig(n_transit=8, tf_n_embd=16, tf_n_layer=2, tf_n_head=2, tf_n_inner=32)


def test_peak_allocated_mb_replays_allocations():
    def fn():
        a = torch.empty(2**18)  # 1 MB
        b = torch.empty(2**18)  # 1 MB (2 MB held)
        del a, b
        torch.empty(2**17)  # 0.5 MB

    assert peak_allocated_mb(fn) == pytest.approx(2.0, rel=0.01)


def tokens(L: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(states=torch.randint(0, 9, (1, L, 2), generator=g), actions=torch.randint(0, 5, (1, L), generator=g),
                rewards=torch.rand(1, L, generator=g), next_states=torch.randint(0, 9, (1, L, 2), generator=g),
                queries=torch.randint(0, 9, (1, L, 2), generator=g))


def counted(fn) -> int:
    """torch's FLOP count of ``fn`` on the explicit attention path (a hook makes the model take it)."""
    with torch.no_grad(), model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: x)]), \
            FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


model = ADTransformer(CFG).eval()


@pytest.mark.parametrize("L", [1, 5, 8])
def test_forward_flops_equal_torchs_count(L):
    assert forward_flops(CFG, L, L, model.n_actions) == counted(lambda: model(**tokens(L)))


def test_a_cached_step_attends_over_every_slot_and_costs_one_token():
    x = tokens(12)
    cache = model.new_cache(1)
    for t in range(11):  # the stream outgrows the 8-slot window
        model.step(cache, *(v[:, t] for v in x.values()))
    step = counted(lambda: model.step(cache, *(v[:, 11] for v in x.values())))
    assert step == forward_flops(CFG, 1, CFG.n_transit, model.n_actions) == decision_flops(CFG, model.n_actions)


@pytest.mark.parametrize("name, rows", [("attention", 1), ("snapkv", 3), ("h2o", None)])
def test_scoring_flops_equal_torchs_count_of_the_scoring_pass(name, rows):
    c = make(name, 3, **({"window": 3} if name == "snapkv" else {}))
    assert scoring_rows(c) == rows
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        attention_for(c, model, tokens(CFG.n_transit))
    n, d = CFG.n_transit, CFG.tf_n_embd
    unseen = 0 if rows is None else (CFG.tf_n_layer - 1) * 4 * d * n * n  # the counter misses fused attention on CPU
    assert scoring_flops(CFG, rows) == counter.get_total_flops() + unseen
    assert scoring_flops(CFG, rows) < forward_flops(CFG, CFG.n_transit, CFG.n_transit, model.n_actions)


def test_a_compressed_decision_costs_its_kept_tokens_plus_any_scoring_pass():
    A = model.n_actions
    assert decision_flops(CFG, A, kept=3) == forward_flops(CFG, 4, 4, A)
    assert decision_flops(CFG, A, kept=3, scored=True, rows=2) == forward_flops(CFG, 4, 4, A) + scoring_flops(CFG, 2)
    assert decision_flops(CFG, A, kept=7) > decision_flops(CFG, A)  # re-encoding 8 tokens costs more than one step
