"""The AD transformer: a causal, sliding-window transformer over a learning history.

Token layout (one token per transition). Token ``k`` embeds transition ``k``
``(s_k, a_k, r_k, s'_k)`` plus the state ``q_k = s_{k+1}`` of the decision that
follows it, and predicts that decision's action ``a_{k+1}``. So every position
carries an action target, and row ``i`` of an attention pattern reads as
"decision ``i + 1``'s attention to transitions ``0..i``"; the last key of the
query row is the most recent transition (which also carries the query state).

Positions are rotary (RoPE) at each transition's step in its stream, so only
relative offsets matter: a compressed context can keep its original offsets
(``positions="original"``) or be renumbered ``0..K`` (``"renumber"``), see
:mod:`adkit.compress`. Attention is causal within a sliding window of
``n_transit`` tokens. Trained on long sequences with that mask, the model is
exactly the model a rollout with a rolling key/value cache of ``n_transit``
entries computes, so a rollout step costs O(n_transit), not O(n_transit^2)
(tested against full recompute in ``tests/test_model.py``).

Two attention paths share the weights: fused ``scaled_dot_product_attention``
(training, rollouts) and an explicit softmax that feeds the hook point
``blocks.{l}.attn.hook_pattern`` ``(batch, head, query, key)``. The explicit path
runs whenever a hook is attached (see :meth:`ADTransformer.hooks` and
:meth:`ADTransformer.run_with_cache`), except a hook on ``blocks.{l}.attn.hook_query_pattern``
``(batch, head, query_rows, key)``, the last ``query_rows`` queries' rows alone (default 1): they are
computed beside the fused path, before it, a few rows instead of the whole pattern (what strategies
that score with the deciding query's attention, or SnapKV's last rows, read).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from adkit.compress.evict import Evictor, set_shape
from adkit.config import ModelConfig
from adkit.envs import spec as env_spec
from adkit.model.cache import EvictingCache, KVCache
from adkit.model.hooks import ActivationCache, HookPoint, StopForward
from adkit.model.rope import apply_rope, rope_angles

POSITIONS = ("original", "renumber")
RETURN_LEVELS = 4  # episode returns so far that model.episode_return tells apart (0, 1, 2, 3 or more)


def window_mask(n_query: int, n_key: int, window: int, device=None) -> torch.Tensor:
    """Boolean (n_query, n_key) mask: query i (the last n_query of the keys) sees keys in (i-window, i]."""
    q = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    return (k <= q) & (k > q - window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.tf_n_embd % cfg.tf_n_head == 0, "tf_n_embd must be divisible by tf_n_head"
        self.n_head, self.head_dim = cfg.tf_n_head, cfg.tf_n_embd // cfg.tf_n_head
        self.qkv = nn.Linear(cfg.tf_n_embd, 3 * cfg.tf_n_embd)
        self.proj = nn.Linear(cfg.tf_n_embd, cfg.tf_n_embd)
        self.attn_dropout, self.resid_dropout = cfg.tf_attn_dropout, nn.Dropout(cfg.tf_dropout)
        self.hook_pattern = HookPoint()
        self.hook_query_pattern = HookPoint()  # the last query_rows rows of the pattern, (B, H, query_rows, Lk)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0, explicit: bool = False,
                query_rows: int = 1):
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, L, C)
        q, k, v = (t.view(B, L, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, L, dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v, mask = cache.update(layer, k, v)  # (B, H, W, dh) x2, (1, W) or (B, 1, 1, W)
            explicit = explicit or cache.wants_attention
        p = self.attn_dropout if self.training else 0.0
        if explicit:
            scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)  # (B, H, L, Lk); scaled on the small side
            pattern = self.hook_pattern(scores.masked_fill_(~mask, float("-inf")).softmax(-1))
            if cache is not None and cache.wants_attention:
                cache.record(pattern)
            if self.hook_query_pattern._forward_hooks:
                self.hook_query_pattern(pattern[:, :, -query_rows:])  # (B, H, r, Lk)
            y = F.dropout(pattern, p, self.training) @ v  # (B, H, L, dh)
        else:
            if self.hook_query_pattern._forward_hooks:  # the last rows alone, before the fused attention
                rows = (q[:, :, -query_rows:] / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)  # (B, H, r, Lk)
                self.hook_query_pattern(rows.masked_fill_(~mask[..., -query_rows:, :], float("-inf")).softmax(-1))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, L, dh)
        y = y.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.tf_n_embd), nn.LayerNorm(cfg.tf_n_embd)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.tf_n_embd, cfg.tf_n_inner), nn.GELU(),
                                 nn.Linear(cfg.tf_n_inner, cfg.tf_n_embd), nn.Dropout(cfg.tf_dropout))
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x, cos, sin, mask, cache=None, layer=0, explicit=False, query_rows=1):
        x = self.hook_resid_pre(x)
        x = x + self.attn(self.ln_1(x), cos, sin, mask, cache, layer, explicit, query_rows)
        return self.hook_resid_post(x + self.mlp(self.ln_2(x)))


class ADTransformer(nn.Module):
    """Causal sliding-window transformer mapping a history to next-action logits."""

    def __init__(self, cfg: ModelConfig, env: str = "darkroom", positions: str = "original"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be 'original' or 'renumber', got {positions!r}")
        if cfg.episode_step and positions == "renumber":
            raise ValueError("model.episode_step reads the step within the episode from the original positions; "
                             "it cannot be combined with compress.positions='renumber'")
        self.cfg, self.positions = cfg, positions  # positions: how a compressed context is numbered for this model
        s = env_spec(env)
        self.env = s.name  # task family the model reads (fixes state and action vocabularies)
        self.grid_size, self.n_actions, self.horizon = s.size, s.n_actions, s.horizon
        d = cfg.tf_n_embd
        # a position is embedded as row + column (per role), so "rewarded at row r" transfers to every
        # column: goals never seen in training are reached in context
        self.emb_state, self.emb_next, self.emb_query = (nn.Embedding(2 * s.size, d) for _ in range(3))
        self.emb_action = nn.Embedding(s.n_actions, d)
        self.emb_reward = nn.Linear(1, d)
        # the step within the episode: which events belong to the episode under way
        self.emb_step = nn.Embedding(s.horizon, d) if cfg.episode_step else None
        # the episode's return so far, 0 .. RETURN_LEVELS - 1 (more is clipped): Key-to-Door's key is held at 1
        self.emb_return = nn.Embedding(RETURN_LEVELS, d) if cfg.episode_return else None
        self.drop = nn.Dropout(cfg.tf_dropout)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.tf_n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, s.n_actions)
        self.apply(self._init_weights)
        for name, mod in self.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- inputs -------------------------------------------------------------------------
    def _pos(self, table: nn.Embedding, xy: torch.Tensor) -> torch.Tensor:
        """(…, 2) grid positions -> (…, d): row embedding + column embedding."""
        xy = xy.long()
        return table(xy[..., 0]) + table(xy[..., 1] + self.grid_size)

    def embed(self, states, actions, rewards, next_states, queries, positions=None,
              episode_return=None) -> torch.Tensor:
        """Token embeddings (B, L, d) from transitions (B, L, ·) and decision states (B, L, 2); with
        ``model.episode_step``, also from the transitions' stream positions (B, L); with
        ``model.episode_return``, from their episodes' returns so far (B, L)."""
        x = (self._pos(self.emb_state, states) + self.emb_action(actions.long())
             + self.emb_reward(rewards.float()[..., None]) + self._pos(self.emb_next, next_states)
             + self._pos(self.emb_query, queries))
        if self.emb_step is not None:
            x = x + self.emb_step(positions.long() % self.horizon)
        if self.emb_return is not None:
            if episode_return is None:
                raise ValueError("this model reads each transition's episode return so far (model.episode_return); "
                                 "pass episode_return (Tokens carry it)")
            x = x + self.emb_return(episode_return.round().long().clamp(0, RETURN_LEVELS - 1))
        return self.hook_embed(self.drop(x))

    def hook_points(self) -> dict[str, HookPoint]:
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    # ---- forward ------------------------------------------------------------------------
    def forward(self, states, actions, rewards, next_states, queries, positions=None,
                episode_return=None, keep=None, query_rows: int = 1) -> torch.Tensor:
        """Action logits (B, L, A) for the decision after each of the L transitions.

        ``positions`` (B, L): step of each transition in its stream (rotary positions);
        default ``0..L-1``. The attention window is ``n_transit`` tokens. ``keep`` (B, L, L) bool, or
        (B, n_layer, n_head, L, L) per layer and head, narrows each query to the tokens it may attend
        to (:func:`adkit.compress.evict.keep_mask`: an evicting cache's, which this forward then
        computes in one pass). ``query_rows``: how many of the last queries' rows
        ``blocks.{l}.attn.hook_query_pattern`` gives.
        """
        B, L = actions.shape
        if positions is None:
            positions = torch.arange(L, device=actions.device).expand(B, L)
        x = self.embed(states, actions, rewards, next_states, queries, positions, episode_return)  # (B, L, d)
        cos, sin = rope_angles(positions, self.cfg.tf_n_embd // self.cfg.tf_n_head, self.cfg.rope_base)
        mask = window_mask(L, L, self.cfg.n_transit, x.device)  # (L, L)
        if keep is not None:
            keep = keep[:, None, None] if keep.dim() == 3 else keep  # (B, n_layer or 1, n_head or 1, L, L)
            sets = (self.cfg.tf_n_layer, self.cfg.tf_n_head)
            if not all(n in (1, full) for n, full in zip(keep.shape[1:3], sets)):
                raise ValueError(f"keep masks per layer and head must be (B, 1 or {sets[0]}, 1 or {sets[1]}, L, L) "
                                 f"for this model, got {tuple(keep.shape)}")
        explicit = self._hooked()
        for layer, block in enumerate(self.blocks):
            m = mask if keep is None else mask & keep[:, layer % keep.shape[1]]  # (L, L) or (B, 1 or H, L, L)
            x = block(x, cos, sin, m, explicit=explicit, query_rows=query_rows)
        return self.head(self.ln_f(x))

    def new_cache(self, batch: int) -> KVCache:
        c = self.cfg
        return KVCache(c.tf_n_layer, batch, c.tf_n_head, c.tf_n_embd // c.tf_n_head, c.n_transit,
                       self.head.weight.device)

    def new_evicting_cache(self, batch: int, compressor, feed=None, generator=None,
                           sets: str | None = None) -> EvictingCache:
        """A cache of at most ``compressor.budget`` transitions per keep set, evicted by ``compressor``;
        ``sets``: one keep set per ``"stream"``, ``"layer"`` or ``"head"`` (default the strategy's
        ``evict_sets``); ``feed``, ``generator``: see :class:`adkit.compress.evict.Evictor`."""
        c = self.cfg
        device = self.head.weight.device
        shape = set_shape(sets or compressor.evict_sets, c.tf_n_layer, c.tf_n_head)
        evictor = Evictor(compressor, batch, c.n_transit, feed, generator, device, shape)
        back = None  # renumbered contexts: the rotation of one position back, for keys an eviction moves
        if self.positions == "renumber":
            back = rope_angles(torch.full((1, 1), -1, device=device), c.tf_n_embd // c.tf_n_head, c.rope_base)
        return EvictingCache(c.tf_n_layer, c.tf_n_head, c.tf_n_embd // c.tf_n_head, evictor, back)

    @torch.no_grad()
    def step(self, cache: KVCache | EvictingCache, states, actions, rewards, next_states, queries,
             episode_return=None) -> torch.Tensor:
        """One rollout step: append one transition per row (B, ·) and return logits (B, A).

        Costs O(n_transit) per layer whatever the history length (O(K) with an evicting
        cache). The token's rotary position is ``cache.position``: its index in the stream
        (its place among the held for an evicting cache of a renumbered model).
        """
        cache.add(states, actions, rewards, next_states)
        pos = torch.full((actions.shape[0], 1), cache.position, device=actions.device)  # (B, 1)
        x = self.embed(states[:, None], actions[:, None], rewards[:, None], next_states[:, None], queries[:, None],
                       pos, None if episode_return is None else episode_return[:, None])  # (B, 1, d)
        cos, sin = rope_angles(pos, self.cfg.tf_n_embd // self.cfg.tf_n_head, self.cfg.rope_base)
        explicit = self._hooked()
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, None, cache=cache, layer=layer, explicit=explicit)
        cache.advance()
        return self.head(self.ln_f(x))[:, 0]

    # ---- hooks (TransformerLens style) --------------------------------------------------------
    def _hooked(self) -> bool:
        """Whether a hook needs the explicit attention path (any but the query-row hooks: the fused path feeds them)."""
        return any(len(m._forward_hooks) for name, m in self.hook_points().items()
                   if not name.endswith("hook_query_pattern"))

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: list[tuple[str | Callable[[str], bool], Callable]],
              stop_after: str | None = None) -> Iterator[ADTransformer]:
        """Attach ``(name or name-filter, fn(activation, hook))`` pairs for the duration of the block.

        ``fn`` may return a replacement activation. ``stop_after``: a hook point after whose hooks the
        forward pass ends, and with it the ``with`` block, quietly (for callers that need nothing later).
        Hooks are always removed, even if the forward pass raises.
        """
        points = self.hook_points()
        handles = []

        def stop(*_):
            raise StopForward

        try:
            for name, fn in [*fwd_hooks, *([(stop_after, stop)] if stop_after else [])]:
                match = [p for n, p in points.items() if (name(n) if callable(name) else n == name)]
                if not match:
                    raise KeyError(f"no hook point {name!r}; available: {sorted(points)}")
                for p in match:
                    handles.append(p.register_forward_hook(lambda mod, inp, out, fn=fn: fn(out, mod)))
            yield self
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(self, *args, names: Callable[[str], bool] | str | None = None,
                       **kwargs) -> tuple[torch.Tensor, ActivationCache]:
        """Run :meth:`forward` and keep the activations whose hook name passes ``names``."""
        cache = ActivationCache()
        if isinstance(names, str):
            wanted = names
            names = lambda n: n.endswith(wanted)  # noqa: E731
        keep = names or (lambda n: True)

        def save(act, hook):
            cache[hook.name] = act.detach()

        with self.hooks([(keep, save)]):
            logits = self(*args, **kwargs)
        return logits, cache
