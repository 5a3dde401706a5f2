"""TransformerLens-style hook points: named places in the forward pass, and a cache of what passed there.

``blocks.{l}.attn.hook_pattern`` ``(batch, head, query, key)``, ``blocks.{l}.hook_resid_pre`` /
``hook_resid_post`` ``(batch, token, d)`` and ``hook_embed``; see :meth:`ADTransformer.hooks`
and :meth:`ADTransformer.run_with_cache`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class HookPoint(nn.Identity):
    """A named place in the forward pass; hooks attach here (TransformerLens style)."""

    name: str = ""


class StopForward(Exception):
    """Ends a forward pass at a hook point when nothing after it is needed (TransformerLens's
    ``stop_at_layer``, anywhere in a layer): see ``stop_after`` in :meth:`ADTransformer.hooks`."""


class ActivationCache(dict):
    """Activations by hook name; ``cache["pattern", 2]`` means ``blocks.2.attn.hook_pattern``."""

    ALIASES = {"pattern": "attn.hook_pattern", "resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post"}

    def __getitem__(self, key):
        if isinstance(key, tuple):
            short, layer = key
            key = f"blocks.{layer}.{self.ALIASES.get(short, short)}"
        return super().__getitem__(key)

    def stack(self, short: str = "pattern") -> torch.Tensor:
        """Stack one activation over layers: ``pattern`` -> ``(layer, batch, head, query, key)``."""
        layers = sorted(int(k.split(".")[1]) for k in self if k.endswith(self.ALIASES.get(short, short)))
        return torch.stack([self[short, layer] for layer in layers])
