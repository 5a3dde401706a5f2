"""Helpers shared by the source algorithms."""

from __future__ import annotations


def linear(start: float, end: float, frac: float) -> float:
    """Linear interpolation from ``start`` to ``end`` at ``frac`` in [0, 1] (clipped)."""
    return start + (end - start) * min(1.0, max(0.0, frac))
