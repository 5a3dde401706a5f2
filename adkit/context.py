"""Compressed contexts: the one code path shared by retraining and training-free evaluation.

A context is the model's input for ``L`` tokens (see :mod:`adkit.model`): the
first ``n = L - 1`` are earlier transitions, the last one is the decision's own
token (the most recent transition plus the current state) and is always kept.
A compressor keeps ``K`` of the ``n`` earlier transitions, in chronological order.

Positions after compression (``ModelConfig.positions``):

* ``"original"``: kept transitions keep their step in the stream, so the model
  still sees how far back each one lies (rotary positions: only gaps matter);
* ``"renumber"``: the kept tokens are numbered ``0..K`` as if consecutive.

The same choice is applied when training windows are compressed and when a
rollout compresses its context, so a model is always evaluated on the kind of
context it was trained on.
"""

from __future__ import annotations

import torch

from adkit.compress import Compressor, gather

FIELDS = ("states", "actions", "rewards", "next_states", "queries", "positions")


def query_attention(model, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """Head- and layer-averaged attention pattern ``(B, L, L)`` of ``model`` on ``tokens``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(**tokens, names="hook_pattern")
    return cache.stack("pattern").mean((0, 2))  # (layer, B, H, L, L) -> (B, L, L)


def compress_tokens(compressor: Compressor, tokens: dict[str, torch.Tensor], positions: str = "original",
                    attention: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Keep the decision's token and the compressor's choice of the earlier transitions.

    ``tokens``: model inputs ``(B, L, ...)`` with ``positions`` (step in stream).
    ``attention``: what the compressor scores with, ``(B, L, L)`` / ``(B, H, L, L)``
    patterns or ``(B, L - 1)`` scores (only needed by attention-based strategies).
    Returns inputs for ``K + 1`` tokens.
    """
    if positions not in ("original", "renumber"):
        raise ValueError(f"positions must be 'original' or 'renumber', got {positions!r}")
    B, L = tokens["actions"].shape
    n = L - 1
    bind = getattr(getattr(compressor, "policy", None), "bind", None)
    if bind is not None:  # the oracle scores with the model on this very context
        bind(tokens)
    idx = compressor.select(tokens["states"][:, :n], tokens["actions"][:, :n], tokens["rewards"][:, :n],
                            tokens["next_states"][:, :n], attention, positions=tokens["positions"][:, :n],
                            generator=generator)  # (B, K)
    idx = torch.cat([idx, torch.full((B, 1), n, dtype=idx.dtype, device=idx.device)], 1)  # (B, K + 1)
    return gather_tokens(tokens, idx, positions)


def gather_tokens(tokens: dict[str, torch.Tensor], idx: torch.Tensor, positions: str) -> dict[str, torch.Tensor]:
    """Tokens at ``idx`` ``(B, K)`` (ascending), with positions kept or renumbered ``0..K-1``."""
    out = dict(zip(tokens, gather(idx, *tokens.values())))
    if positions == "renumber":
        out["positions"] = torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1)
    return out


@torch.no_grad()
def compressed_logits(model, window: dict[str, torch.Tensor], compressor: Compressor,
                      generator: torch.Generator | None = None, scorer=None) -> tuple[torch.Tensor, int]:
    """One decision after compressing ``window`` (B, L, ·): the step a compressed rollout takes.

    Attention-based strategies score with ``scorer``'s attention on the whole window
    (default ``model``'s own). Returns the logits ``(B, A)`` and the number of tokens
    the decision attended to (K + 1).
    """
    attention = query_attention(scorer or model, window) if compressor.needs_attention else None
    ctx = compress_tokens(compressor, window, model.cfg.positions, attention, generator=generator)
    return model(**ctx)[:, -1], ctx["actions"].shape[1]


def compress_window(compressor: Compressor, inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                    positions: str = "original", scorer=None,
                    generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A training window compressed exactly as a rollout compresses a decision's context.

    ``inputs`` ``(B, L, ·)`` and ``targets`` ``(B, L)`` as :func:`adkit.train.split_batch`
    makes them; the last token is the decision. Attention-based strategies score with
    ``scorer``'s attention on the whole window. Returns inputs for ``K + 1`` tokens and
    their targets ``(B, K + 1)``: every kept token keeps its own action target.
    """
    attention = query_attention(scorer, inputs) if compressor.needs_attention else None
    out = compress_tokens(compressor, {**inputs, "targets": targets}, positions, attention, generator=generator)
    return out, out.pop("targets")


class ModelPolicy:
    """The model as :class:`~adkit.compress.OracleCompressor`'s policy.

    ``bind(tokens)`` sets the current context; a call with the (row-repeated)
    transitions and ``keep`` indices ``(B', m)`` returns the logits ``(B', A)`` of
    the decision after the kept transitions.
    """

    def __init__(self, model, positions: str = "original"):
        self.model, self.positions, self.tokens = model, positions, None

    def bind(self, tokens: dict[str, torch.Tensor]) -> None:
        self.tokens = tokens

    @torch.no_grad()
    def __call__(self, states, actions, rewards, next_states, keep: torch.Tensor) -> torch.Tensor:
        B = self.tokens["actions"].shape[0]
        reps = keep.shape[0] // B
        toks = {k: v.repeat_interleave(reps, 0) for k, v in self.tokens.items()}  # (B', L, ...)
        n = toks["actions"].shape[1] - 1
        last = torch.full((keep.shape[0], 1), n, dtype=keep.dtype, device=keep.device)  # the decision's own token
        idx = torch.cat([keep, last], 1)  # (B', m + 1)
        return self.model(**gather_tokens(toks, idx, self.positions))[:, -1]


def build(name: str, budget: int, model, env_name: str, **kw) -> Compressor:
    """A compressor by short name, with what it needs from the run filled in
    (the episode length for ``best-episode``, the model for ``oracle``)."""
    from adkit import compress
    from adkit.envs import spec

    if name == "best-episode":
        kw.setdefault("horizon", spec(env_name).horizon)
    if name == "oracle":
        kw.setdefault("policy", ModelPolicy(model, model.cfg.positions))
    return compress.make(name, budget, **kw)
