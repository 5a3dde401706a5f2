"""Cost measures: peak memory from allocation events, attention work from token counts."""

import pytest
import torch

from adkit.compress.cost import attention_flops, causal_pairs, peak_allocated_mb


def test_peak_allocated_mb_replays_allocations():
    def f():
        a = torch.ones(2**20)  # 4 MB
        b = a * 2  # 8 MB held
        del a
        return b * 3  # 8 MB held again, never 12

    assert peak_allocated_mb(f) == pytest.approx(8.0, abs=0.01)
    assert peak_allocated_mb(lambda: None) == 0.0


def test_causal_pairs_counts_the_lower_triangle_within_the_window():
    for tokens in (1, 5, 12):
        assert causal_pairs(tokens) == int(torch.ones(tokens, tokens).tril().sum())
        for window in (1, 3, 20):
            band = torch.ones(tokens, tokens).tril() - torch.ones(tokens, tokens).tril(-window)
            assert causal_pairs(tokens, window) == int(band.sum())


def test_attention_flops_are_four_d_per_pair_and_layer():
    assert attention_flops(n_layer=4, n_embd=32, pairs=80) == 4 * 32 * 4 * 80
    # keeping half the tokens of a re-encoded context cuts the attention work to about a quarter
    assert causal_pairs(40) / causal_pairs(80) == pytest.approx(0.25, abs=0.01)
