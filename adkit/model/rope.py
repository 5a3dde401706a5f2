"""Rotary position embeddings (RoPE): positions enter attention as rotations of query and key
channel pairs, so attention depends only on the offset between them."""

from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of rotary angles for integer ``positions`` (B, L) -> two (B, 1, L, dim/2)."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)  # (dim/2,)
    angles = positions.to(torch.float32)[:, None, :, None] * inv_freq  # (B, 1, L, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, H, L, dh) by the given angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, dh/2) each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)  # (B, H, L, dh)
