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


def attention_pass(model, tokens: Tokens, point: str, fn, query_rows: int = 1, stop: bool = True) -> None:
    """Run ``model`` on ``tokens`` with ``fn(activation, hook)`` on every layer's ``attn.{point}``, and (``stop``)
    end the pass right after the last layer's: its attention output, MLP and head are not needed."""
    last = f"blocks.{model.cfg.tf_n_layer - 1}.attn.{point}" if stop else None
    with torch.no_grad(), model.hooks([(lambda name: name.endswith(f"attn.{point}"), fn)], stop_after=last):
        model(**tokens, query_rows=query_rows)


def _head_layer_mean(model, tokens: Tokens, point: str, query_rows: int = 1) -> torch.Tensor:
    """The mean over heads and layers of what hook points ``blocks.{l}.attn.{point}`` see, ``(B, H, Q, L)``
    each -> ``(B, Q, L)``: summed layer by layer as each layer computes it (stacking every layer's pattern
    afterwards would cost a copy of them all, about a forward pass)."""
    total = None

    def add(pattern, hook):
        nonlocal total
        heads = pattern.sum(1)  # (B, Q, L)
        total = heads if total is None else total.add_(heads)

    attention_pass(model, tokens, point, add, query_rows)
    return total / (model.cfg.tf_n_layer * model.cfg.tf_n_head)


def query_attention(model, tokens: Tokens, per_head: bool = False) -> torch.Tensor:
    """Head- and layer-averaged attention pattern ``(B, L, L)`` of ``model`` on ``tokens``; with
    ``per_head``, each layer's and head's ``(B, n_layer, n_head, L, L)``, each written in place."""
    if not per_head:
        return _head_layer_mean(model, tokens, "hook_pattern")
    out = None

    def put(pattern, hook):  # (B, H, L, L)
        nonlocal out
        if out is None:
            out = pattern.new_empty(pattern.shape[0], model.cfg.tf_n_layer, *pattern.shape[1:])  # (B, layer, H, L, L)
        out[:, int(hook.name.split(".")[1])] = pattern

    attention_pass(model, tokens, "hook_pattern", put)
    return out


def query_rows(model, tokens: Tokens, rows: int = 1) -> torch.Tensor:
    """The last ``rows`` queries' attention ``(B, rows, L)``, heads and layers averaged: the last rows of
    :func:`query_attention`'s pattern, computed beside the fused attention (a few rows, not the pattern)."""
    return _head_layer_mean(model, tokens, "hook_query_pattern", rows)


def scoring_rows(compressor: Compressor) -> int | None:
    """How many of the last query rows an attention-scored ``compressor`` reads: 1 (the deciding query's:
    ``evict_attention`` ``"current"``, TOVA, ``threshold``, ``adaptive``), SnapKV's ``window`` (``"window"``),
    or None, the whole pattern (H2O's column sums)."""
    return {"current": 1, "window": getattr(compressor, "window", None)}.get(compressor.evict_attention)


def attention_for(compressor: Compressor, model, window: Tokens) -> torch.Tensor | None:
    """What ``compressor`` scores ``window`` (B, L, ·) with, from ``model``'s attention: nothing if it
    does not read attention; the mean of the last :func:`scoring_rows` rows over the ``L - 1`` earlier
    transitions ``(B, L - 1)`` if that is all it reads; else the averaged pattern ``(B, L, L)``."""
    if not compressor.needs_attention:
        return None
    rows = scoring_rows(compressor)
    if rows is None:
        return query_attention(model, window)
    return query_rows(model, window, rows)[:, :, :-1].mean(1)


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
    (default ``model``'s own; :func:`attention_for`). Returns the logits ``(B, A)`` and the number
    of tokens the decision attended to (K + 1).
    """
    attention = attention_for(compressor, scorer or model, window)
    ctx = compress_tokens(compressor, window, model.positions, attention, generator=generator)
    return model(**ctx)[:, -1], ctx.length


def compress_window(compressor: Compressor, window: Tokens, positions: str = "original", scorer=None,
                    generator: torch.Generator | None = None) -> Tokens:
    """A training window (with targets) compressed exactly as a rollout compresses a decision's context.

    The last token is the decision. Attention-based strategies score with ``scorer``'s
    attention on the whole window (:func:`attention_for`). Every kept token keeps its own action target.
    """
    attention = attention_for(compressor, scorer, window)
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
    if name == "profile" and "rule" not in kw:
        raise ValueError("'profile' keeps by a rule profiled from the full-context model's attention: pass rule= "
                         "(adkit.study.cells.profile_kwargs profiles one)")
    return make(name, budget, **kw)
