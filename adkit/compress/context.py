"""Compressed contexts: the one code path shared by retraining and training-free evaluation.

A context is the model's input for ``L`` tokens (:class:`adkit.data.tokens.Tokens`): the
first ``n = L - 1`` are earlier transitions, the last one is the decision's own token
(the most recent transition plus the current state) and is always kept. A compressor
keeps ``K`` of the ``n`` earlier transitions, in chronological order.

Positions after compression (a model's ``positions``, saved with its checkpoint):

* ``"original"``: kept transitions keep their step in the stream, so the model
  still sees how far back each one lies (rotary positions: only gaps matter);
* ``"renumber"``: the kept tokens are numbered ``0..K`` as if consecutive.

The same choice is applied when training windows are compressed and when a
rollout compresses its context, so a model is always evaluated on the kind of
context it was trained on.
"""

from __future__ import annotations

import torch

from adkit import envs
from adkit.compress.strategies import Compressor, Transitions, make
from adkit.data.tokens import Tokens

POSITIONS = ("original", "renumber")


def query_attention(model, tokens: Tokens, per_head: bool = False) -> torch.Tensor:
    """Head- and layer-averaged attention pattern ``(B, L, L)`` of ``model`` on ``tokens``; with
    ``per_head``, each layer's and head's ``(B, n_layer, n_head, L, L)``."""
    if per_head:
        with torch.no_grad():
            _, cache = model.run_with_cache(**tokens, names="hook_pattern")
        return cache.stack("pattern").transpose(0, 1)  # (layer, B, H, L, L) -> (B, layer, H, L, L)
    total = None  # the heads' sums added layer by layer: stacking every layer's pattern costs about a forward pass

    def add(pattern, hook):
        nonlocal total
        heads = pattern.sum(1)  # (B, H, L, L) -> (B, L, L)
        total = heads if total is None else total.add_(heads)

    with torch.no_grad(), model.hooks([(lambda name: name.endswith("hook_pattern"), add)]):
        model(**tokens)
    return total / (model.cfg.tf_n_layer * model.cfg.tf_n_head)  # (B, L, L)


def compress_tokens(compressor: Compressor, tokens: Tokens, positions: str = "original",
                    attention: torch.Tensor | None = None, generator: torch.Generator | None = None) -> Tokens:
    """Keep the decision's token and the compressor's choice of the earlier transitions.

    ``tokens``: a context ``(B, L, ...)``; ``attention``: what the compressor scores with,
    ``(B, L, L)`` / ``(B, H, L, L)`` patterns or ``(B, L - 1)`` scores (only needed by
    attention-based strategies). Returns ``K + 1`` tokens (targets follow their tokens).
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be 'original' or 'renumber', got {positions!r}")
    earlier = tokens.tokens(slice(None, -1))  # (B, n, ...)
    idx = compressor.select(earlier.states, earlier.actions, earlier.rewards, earlier.next_states, attention,
                            positions=earlier.positions, generator=generator, context=tokens)  # (B, K)
    last = torch.full((tokens.batch, 1), tokens.length - 1, dtype=idx.dtype, device=idx.device)
    return tokens.gather(torch.cat([idx, last], 1), renumber=positions == "renumber")  # (B, K + 1, ...)


@torch.no_grad()
def compressed_logits(model, window: Tokens, compressor: Compressor, generator: torch.Generator | None = None,
                      scorer=None) -> tuple[torch.Tensor, int]:
    """One decision after compressing ``window`` (B, L, ·): the step a compressed rollout takes.

    Attention-based strategies score with ``scorer``'s attention on the whole window
    (default ``model``'s own). Returns the logits ``(B, A)`` and the number of tokens
    the decision attended to (K + 1).
    """
    attention = query_attention(scorer or model, window) if compressor.needs_attention else None
    ctx = compress_tokens(compressor, window, model.positions, attention, generator=generator)
    return model(**ctx)[:, -1], ctx.length


def compress_window(compressor: Compressor, window: Tokens, positions: str = "original", scorer=None,
                    generator: torch.Generator | None = None) -> Tokens:
    """A training window (with targets) compressed exactly as a rollout compresses a decision's context.

    The last token is the decision. Attention-based strategies score with ``scorer``'s
    attention on the whole window. Every kept token keeps its own action target.
    """
    attention = query_attention(scorer, window) if compressor.needs_attention else None
    return compress_tokens(compressor, window, positions, attention, generator=generator)


class ModelPolicy:
    """The model as :class:`~adkit.compress.OracleCompressor`'s policy: the logits of the decision
    after the kept transitions of the context being compressed (``h.context``, passed explicitly
    by :func:`compress_tokens`)."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, h: Transitions, keep: torch.Tensor) -> torch.Tensor:
        if h.context is None:
            raise ValueError("the oracle's model policy scores model contexts: compress them with "
                             "adkit.compress.context.compress_tokens (or pass context= to select)")
        context = h.context.repeat_rows(keep.shape[0] // h.context.batch)  # (B', L, ...)
        last = torch.full((keep.shape[0], 1), context.length - 1, dtype=keep.dtype, device=keep.device)
        kept = context.gather(torch.cat([keep, last], 1), renumber=self.model.positions == "renumber")
        return self.model(**kept)[:, -1]  # (B', A)


def build(name: str, budget: int, model, env_name: str, **kw) -> Compressor:
    """A compressor by short name, with what it needs from the run filled in
    (the episode length for ``best-episode``, the model for ``oracle``)."""
    if name == "best-episode":
        kw.setdefault("horizon", envs.spec(env_name).horizon)
    if name == "oracle":
        kw.setdefault("policy", ModelPolicy(model))
    return make(name, budget, **kw)
