"""Attention extraction: every layer and head in one forward pass, stored in one file per run.

Contexts come from two sources:

* ``"windows"``: training-style windows of ``n_transit`` transitions from the
  histories of the train tasks (:class:`adkit.data.histories.WindowSampler`);
* ``"rollout"``: the model's own in-context rollouts on the held-out tasks, the
  context of decision ``t`` being the last ``n_transit`` transitions before it,
  recorded at chosen decision steps so one trajectory can be watched going from
  exploration to exploitation (the original toolkit's ``trajectory_idx`` mode).

What a pattern shows, and what a decision sees: each layer attends to the last
``n_transit`` tokens, so a stored pattern is the query row over those ``n_transit``
transitions (re-encoded as one window, which is what the figures read). In the rollout
itself the rolling cache keeps every layer's keys over its own window, so through the
layers a decision reaches up to ``n_layer x (n_transit - 1) + 1`` transitions back; the
stored window is the part of that history its last layer attends to directly.

:func:`extract` runs the model once per batch chunk with a hook on
``blocks.{l}.attn.hook_pattern`` of every requested layer (the explicit-softmax
path of :mod:`adkit.model`) and copies the requested heads into one
``(layer, sample, head, query, key)`` float32 tensor.

File ``RUN/attention/attention.h5`` (HDF5), one group per source; re-extracting
one source keeps the other::

    attrs: format="adkit-attention", version
    /windows, /rollout
      attrs: source, env, horizon, n_transit, n_layer, n_head, n_actions, positions,
             layers, heads (those stored), seed, created
      patterns   (layer, sample, head, query, key) float16, one chunk per (layer, head, 64 samples)
      states, next_states, queries (sample, T, 2) int8; actions (sample, T) int8;
      rewards (sample, T) float32; positions (sample, T) int64 (step in the stream);
      episode (sample, T) int16 (episode within the context, 0 = oldest); step (sample, T)
      int16 (step within the episode); is_query (sample, T) bool (the last token)
      task (sample, task_dim) int64; trajectory, decision (sample,) int64 (the decision
      step that the query row makes); next_action (sample,) int64 (the action taken
      there, in the data or the rollout); logits (sample, A) float32 (the model's, at the query)

:func:`load_record` reads only the layers and heads asked for.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from adkit import envs
from adkit.data.collect import load_for
from adkit.data.histories import Histories, WindowSampler
from adkit.data.tokens import INPUTS, Tokens
from adkit.io import atomic_path, open_hdf5
from adkit.model.checkpoint import load as load_model
from adkit.model.evaluate import rollout
from adkit.run import MissingStage, Run, task_split

FORMAT, VERSION = "adkit-attention", 1
SOURCES = ("windows", "rollout")
TOKENS = INPUTS + ("episode", "step", "is_query")
SAMPLES = ("task", "trajectory", "decision", "next_action", "logits")
DTYPES = {"states": np.int8, "next_states": np.int8, "queries": np.int8, "actions": np.int8,
          "rewards": np.float32, "episode_return": np.float32, "positions": np.int64, "episode": np.int16,
          "step": np.int16,
          "is_query": np.bool_, "task": np.int64, "trajectory": np.int64, "decision": np.int64,
          "next_action": np.int64, "logits": np.float32}
CHUNK_SAMPLES = 64  # samples per HDF5 chunk of the patterns
MAKER = "`adkit attention --run-dir {run}` (notebook 02_extract_attention)"


class AttentionFileError(ValueError):
    """An attention file that cannot be used; the message names the file and the command that remakes it."""


# ---- contexts --------------------------------------------------------------------------------------


@dataclass
class Contexts:
    """A batch of B contexts of T tokens and what each sample is.

    ``inputs``: the tokens (B, T, ·). ``task`` (B, task_dim), ``trajectory`` (B,),
    ``decision`` (B,): the decision step of the query row (= last position + 1),
    ``next_action`` (B,): the action taken at that decision.
    """

    inputs: Tokens
    task: np.ndarray
    trajectory: np.ndarray
    decision: np.ndarray
    next_action: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs["actions"].shape[0])


def window_contexts(cfg, h: Histories, n: int, seed: int = 0) -> Contexts:
    """``n`` training-style windows of ``n_transit`` transitions, spread round-robin over the train tasks.

    One :class:`WindowSampler` per task (so each window knows its task), over all streams.
    """
    train_tasks, _ = task_split(cfg)
    rows = h.task_index(train_tasks)
    counts = np.bincount(np.arange(n) % len(rows), minlength=len(rows))  # (n_tasks,) windows per task
    seq = cfg.model.n_transit + 1  # one more transition: the next decision's state and action
    streams = np.arange(h.shape[1])
    batches = [WindowSampler(h, [row], streams, seq, seed=seed * len(rows) + i).sample(int(c))
               for i, (row, c) in enumerate(zip(rows, counts)) if c]
    tokens = Tokens.cat([Tokens.from_transitions(b) for b in batches])  # (n, T, ·), T = n_transit
    task = np.repeat(h.tasks[rows], counts, axis=0)  # (n, task_dim)
    return Contexts(tokens, task, np.arange(n), tokens.positions[:, -1].numpy() + 1, tokens.targets[:, -1].numpy())


def episode_decisions(n_transit: int, horizon: int, steps: int) -> list[int]:
    """Default rollout decision steps: every episode start whose context is a full window."""
    first = -(-n_transit // horizon) * horizon  # first episode start >= n_transit
    return list(range(first, steps, horizon))


def rollout_contexts(model, cfg, decisions: Sequence[int] | None = None, trajectories: int | None = None,
                     seed: int = 0, progress: bool = False) -> Contexts:
    """Contexts of the model's own rollouts on the held-out tasks at chosen decision steps.

    Rolls out all held-out tasks x ``cfg.eval.seeds`` seeds for ``cfg.eval.episodes``
    episodes (rolling key/value cache); the context of decision ``t`` is the last
    ``n_transit`` transitions ``t-n_transit .. t-1`` with their stream positions, exactly
    what the model attended to there. ``decisions`` must lie in ``n_transit .. steps-1``
    (default: every episode start from the first full window, :func:`episode_decisions`).
    Samples are trajectory-major: trajectory ``i`` (task ``i // seeds``, seed ``i % seeds``)
    at every decision in turn; ``trajectories`` keeps the first ones.
    """
    _, test_tasks = task_split(cfg)
    seeds = list(range(seed, seed + cfg.eval.seeds))
    res = rollout(model, cfg.env.name, test_tasks, seeds=seeds, episodes=cfg.eval.episodes,
                  greedy=cfg.eval.greedy, progress=progress)
    n, steps = model.cfg.n_transit, res.steps
    decisions = list(episode_decisions(n, envs.spec(cfg.env.name).horizon, steps) if decisions is None
                     else decisions)
    bad = [t for t in decisions if not n <= t < steps]
    if not decisions or bad:
        raise ValueError(f"decision steps must lie in {n}..{steps - 1} (a full context of n_transit={n} "
                         f"transitions before them, within {steps} rollout steps); got {bad or 'none'}")
    traj = res.trajectories
    S = traj.actions.shape[0] if not trajectories else min(trajectories, traj.actions.shape[0])
    D = len(decisions)
    windows = [traj.window(t, n).rows(slice(0, S)) for t in decisions]  # D x (S, n, ·)
    inputs = Tokens(**{k: torch.stack([w[k] for w in windows], 1).flatten(0, 1)  # (S, D, n, ·) -> (S*D, n, ·)
                       for k in INPUTS})
    task = np.repeat(np.asarray(res.tasks), len(seeds), axis=0)[:S]  # (S, task_dim), task-major streams
    taken = traj.actions[:S][:, decisions].numpy()  # (S, D)
    return Contexts(inputs, np.repeat(task, D, axis=0), np.repeat(np.arange(S), D),
                    np.tile(np.asarray(decisions), S), taken.reshape(-1))


def token_metadata(positions: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """Per-token metadata of contexts from stream positions ``(B, T)``.

    ``episode``: episode within the context (0 = the oldest, possibly partial, episode);
    ``step``: step within its episode; ``is_query``: the last token (it carries the query state).
    """
    positions = np.asarray(positions)
    episode = positions // horizon  # (B, T) episode in the stream
    is_query = np.zeros(positions.shape, dtype=bool)
    is_query[:, -1] = True
    return {"episode": episode - episode[:, :1], "step": positions % horizon, "is_query": is_query}


# ---- extraction ------------------------------------------------------------------------------------


def _select(which: Sequence[int] | None, n: int, what: str) -> list[int]:
    chosen = list(range(n)) if which is None else [int(i) for i in which]
    if not chosen or any(not 0 <= i < n for i in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"{what}s must be distinct indices in 0..{n - 1}, got {which}")
    return chosen


@torch.no_grad()
def extract(model, inputs: Tokens, layers: Sequence[int] | None = None,
            heads: Sequence[int] | None = None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention patterns and the query's action logits, one forward pass per chunk of contexts.

    Args:
        model: an :class:`adkit.model.ADTransformer` (run in eval mode, restored after).
        inputs: model inputs (B, T, ·), ``positions`` included.
        layers, heads: which to keep (default all); the others are never copied.
        batch_size: contexts per forward pass; small chunks keep the explicit softmax in cache
            (on 2 CPU cores 64 is ~1.5x faster per context than 512).

    Returns ``patterns`` (len(layers), B, len(heads), T, T) float32 on the CPU and the
    last position's logits (B, A).
    """
    cfg = model.cfg
    layers, heads = _select(layers, cfg.tf_n_layer, "layer"), _select(heads, cfg.tf_n_head, "head")
    B, T = inputs["actions"].shape
    patterns = torch.empty(len(layers), B, len(heads), T, T)
    logits = torch.empty(B, model.n_actions)
    slot = {f"blocks.{layer}.attn.hook_pattern": i for i, layer in enumerate(layers)}
    head_index = None if heads == list(range(cfg.tf_n_head)) else torch.tensor(heads)
    device = next(model.parameters()).device
    rows = slice(0, 0)  # the chunk being run; read by the hook

    def keep(pattern, hook):  # pattern (b, H, T, T)
        kept = pattern if head_index is None else pattern[:, head_index.to(pattern.device)]
        patterns[slot[hook.name], rows] = kept.float().cpu()

    was_training = model.training
    model.eval()
    try:
        with model.hooks([(lambda name: name in slot, keep)]):
            for lo in range(0, B, batch_size):
                rows = slice(lo, min(B, lo + batch_size))
                chunk = inputs.rows(rows).to(device)
                logits[rows] = model(**chunk)[:, -1].float().cpu()
    finally:
        model.train(was_training)
    return patterns, logits


# ---- the record ------------------------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """Attention of some layers and heads on B contexts of T tokens, with the contexts themselves.

    ``patterns`` (layer, sample, head, query, key) float32 for ``layers`` x ``heads`` (absolute
    indices). ``tokens``: the :data:`TOKENS` arrays (B, T[, 2]); ``samples``: the
    :data:`SAMPLES` arrays (B, ·); ``meta``: source, env, horizon, n_layer, n_head, ...
    """

    patterns: np.ndarray
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    tokens: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    meta: dict

    @property
    def source(self) -> str:
        return self.meta["source"]

    @property
    def n_samples(self) -> int:
        return self.patterns.shape[1]

    @property
    def seq_len(self) -> int:
        return self.patterns.shape[-1]

    def _index(self, layer: int, head: int | None = None) -> tuple[int, int | None]:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not loaded (loaded: {list(self.layers)}); load it with "
                           f"load_record(..., layers=[{layer}])")
        if head is not None and head not in self.heads:
            raise KeyError(f"head {head} is not loaded (loaded: {list(self.heads)}); load it with "
                           f"load_record(..., heads=[{head}])")
        return self.layers.index(layer), None if head is None else self.heads.index(head)

    def layer(self, layer: int) -> np.ndarray:
        """Patterns of one layer (B, heads, T, T)."""
        return self.patterns[self._index(layer)[0]]

    def head_mean(self, layer: int) -> np.ndarray:
        """Patterns of one layer averaged over the loaded heads (B, T, T)."""
        return self.layer(layer).mean(1)

    def pattern(self, layer: int, sample: int, head: int | None = None) -> np.ndarray:
        """One (T, T) pattern; ``head=None`` averages the loaded heads."""
        li, hi = self._index(layer, head)
        p = self.patterns[li, sample]  # (heads, T, T)
        return p.mean(0) if hi is None else p[hi]

    def inputs(self, samples=None, device="cpu") -> Tokens:
        """The tokens of the chosen samples (default all) (B, T, ·)."""
        pick = slice(None) if samples is None else np.asarray(samples)
        return Tokens(**{k: torch.as_tensor(np.asarray(self.tokens[k][pick]), device=device) for k in INPUTS})

    def trajectory(self, index: int) -> np.ndarray:
        """Sample indices of one trajectory, ordered by decision step."""
        found = np.flatnonzero(self.samples["trajectory"] == index)
        if not found.size:
            raise KeyError(f"no trajectory {index}; trajectories: 0..{self.samples['trajectory'].max()}")
        return found[np.argsort(self.samples["decision"][found], kind="stable")]

    @property
    def n_trajectories(self) -> int:
        return int(self.samples["trajectory"].max()) + 1


def build_record(contexts: Contexts, patterns, logits, meta: dict, layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> AttentionRecord:
    """An :class:`AttentionRecord` from contexts, their patterns (l, B, h, T, T) and query logits (B, A).

    ``meta`` needs ``source``, ``env`` and ``horizon``; ``layers``/``heads`` default to all.
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    tokens = {k: np.asarray(v.cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=DTYPES[k])
              for k, v in contexts.inputs.items()}
    tokens.update({k: v.astype(DTYPES[k]) for k, v in token_metadata(tokens["positions"], meta["horizon"]).items()})
    samples = {"task": contexts.task, "trajectory": contexts.trajectory, "decision": contexts.decision,
               "next_action": contexts.next_action, "logits": np.asarray(logits)}
    samples = {k: np.asarray(v, dtype=DTYPES[k]) for k, v in samples.items()}
    layers = tuple(range(patterns.shape[0]) if layers is None else layers)
    heads = tuple(range(patterns.shape[2]) if heads is None else heads)
    return AttentionRecord(patterns, layers, heads, tokens, samples, dict(meta))


def record_contexts(model, contexts: Contexts, source: str, seed: int = 0, layers=None, heads=None,
                    batch_size: int = 64) -> AttentionRecord:
    """Extract the attention of ``model`` on ``contexts`` and wrap it with its metadata."""
    cfg = model.cfg
    layers, heads = _select(layers, cfg.tf_n_layer, "layer"), _select(heads, cfg.tf_n_head, "head")
    patterns, logits = extract(model, contexts.inputs, layers, heads, batch_size)
    meta = {"source": source, "env": model.env, "horizon": envs.spec(model.env).horizon,
            "n_transit": cfg.n_transit, "n_layer": cfg.tf_n_layer, "n_head": cfg.tf_n_head,
            "n_actions": model.n_actions, "positions": model.positions, "seed": seed,
            "model": json.dumps(dataclasses.asdict(cfg)),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    return build_record(contexts, patterns.numpy(), logits.numpy(), meta, layers, heads)


# ---- the file --------------------------------------------------------------------------------------


def save_record(record: AttentionRecord, path: str | Path) -> Path:
    """Write ``record`` as the group of its source in ``path`` atomically, keeping the other sources.

    Patterns are stored as float16 (attention weights in [0, 1]: absolute error < 5e-4).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION)
            _copy_other_sources(path, f, record.source)
            g = f.create_group(record.source)
            g.attrs.update({k: v for k, v in record.meta.items()})
            g.attrs.update(layers=list(record.layers), heads=list(record.heads))
            L, B, H, T, _ = record.patterns.shape
            patterns = g.create_dataset("patterns", data=record.patterns.astype(np.float16),
                                        chunks=(1, min(B, CHUNK_SAMPLES), 1, T, T))
            patterns.attrs["dims"] = "layer, sample, head, query, key"
            for name, value in {**record.tokens, **record.samples}.items():
                g.create_dataset(name, data=value)
    return path


def _copy_other_sources(path: Path, f: h5py.File, source: str) -> None:
    """Copy the groups of the other sources from an existing readable attention file into ``f``."""
    if not path.exists():
        return
    try:
        old = h5py.File(path, "r")
    except OSError:
        return  # an unreadable old file is replaced whole
    with old:
        if old.attrs.get("format") == FORMAT and int(old.attrs.get("version", -1)) == VERSION:
            for name in old:
                if name != source and name in SOURCES:
                    old.copy(old[name], f, name)


def _fail(path: Path, why: str) -> AttentionFileError:
    run = path.parent.parent if path.parent.name == "attention" else "RUN"
    return AttentionFileError(f"{path}: {why}. Re-create it with {MAKER.format(run=run)}.")


def load_record(path: str | Path, source: str = "windows", layers: Sequence[int] | None = None,
                heads: Sequence[int] | None = None) -> AttentionRecord:
    """Read one source's record from an attention file (or a run directory's), only ``layers`` x ``heads``.

    Patterns are read per (layer, head) slice, so unrequested ones never leave the disk.
    A missing file raises :class:`adkit.run.MissingStage`; a corrupt, foreign or
    incomplete one :class:`AttentionFileError`; both name the command that remakes it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "attention" / "attention.h5"
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not path.exists():
        run = path.parent.parent if path.parent.name == "attention" else "RUN"
        raise MissingStage(f"{path.resolve()} does not exist yet; it is made by {MAKER.format(run=run)}")
    with open_hdf5(path, FORMAT, VERSION, _fail) as f:
        if source not in f:
            raise _fail(path, f"no {source!r} contexts in this file (has {sorted(f)}); add them with --source {source}")
        g = f[source]
        missing = [n for n in ("patterns",) + TOKENS + SAMPLES if n not in g]
        if missing:
            raise _fail(path, f"group {source!r} misses datasets {missing}")
        stored_layers, stored_heads = [int(i) for i in g.attrs["layers"]], [int(i) for i in g.attrs["heads"]]
        want_layers = stored_layers if layers is None else [int(i) for i in layers]
        want_heads = stored_heads if heads is None else [int(i) for i in heads]
        for what, want, have in (("layers", want_layers, stored_layers), ("heads", want_heads, stored_heads)):
            if not set(want) <= set(have):
                raise KeyError(f"{path}: {what} {sorted(set(want) - set(have))} are not stored (stored: {have})")
        ds = g["patterns"]
        _, B, _, T, _ = ds.shape
        patterns = np.empty((len(want_layers), B, len(want_heads), T, T), dtype=np.float32)
        try:
            for i, layer in enumerate(want_layers):
                for j, head in enumerate(want_heads):
                    patterns[i, :, j] = ds[stored_layers.index(layer), :, stored_heads.index(head)]
            tokens = {k: g[k][()] for k in TOKENS}
            samples = {k: g[k][()] for k in SAMPLES}
        except OSError:
            raise _fail(path, "its data cannot be read (truncated)") from None
        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.attrs.items()
                if k not in ("layers", "heads")}
    if any(v.shape[:2] != (B, T) for v in tokens.values()) or any(len(v) != B for v in samples.values()):
        raise _fail(path, f"group {source!r} has token or sample arrays that do not match patterns {ds.shape}")
    return AttentionRecord(patterns, tuple(want_layers), tuple(want_heads), tokens, samples, meta)


# ---- the stage -------------------------------------------------------------------------------------


def extract_run(run: Run, source: str = "windows", progress: bool = False) -> AttentionRecord:
    """The ``adkit attention`` extraction stage: read the run's checkpoint, write its attention file.

    ``source="windows"``: ``attention.windows`` windows from the run's histories;
    ``source="rollout"``: rollouts on the held-out tasks recorded at ``attention.decisions``
    (see :func:`rollout_contexts`), ``attention.trajectories`` of them at most (0: all).
    Returns the record written.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    a = run.cfg.attention
    model = load_model(run.require(run.weights, "train"))
    if source == "windows":
        h = load_for(run.cfg, run.require(run.histories, "collect"))
        contexts = window_contexts(run.cfg, h, a.windows, a.seed)
    else:
        contexts = rollout_contexts(model, run.cfg, a.decisions or None, a.trajectories, a.seed, progress)
    record = record_contexts(model, contexts, source, a.seed)
    save_record(record, run.attention)
    return record
