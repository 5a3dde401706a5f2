"""The rolling key/value cache a rollout steps with: O(n_transit) per decision whatever the history length."""

from __future__ import annotations

import torch


class KVCache:
    """Rolling key/value cache of the last ``window`` tokens for every layer.

    Slots are a ring buffer; rotary positions are applied before caching, and
    softmax is order-free, so the slot order never matters.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, window: int, device=None):
        shape = (batch, n_head, window, head_dim)
        self.k = [torch.zeros(shape, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device) for _ in range(n_layer)]
        self.window, self.length = window, 0  # tokens written so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one token's k, v (B, H, 1, dh); return all slots and a (1, window) validity mask."""
        slot = self.length % self.window
        self.k[layer][:, :, slot] = k[:, :, 0]
        self.v[layer][:, :, slot] = v[:, :, 0]
        valid = torch.arange(self.window, device=k.device)[None, :] < min(self.length + 1, self.window)
        return self.k[layer], self.v[layer], valid

    def advance(self) -> None:
        self.length += 1
