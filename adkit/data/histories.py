"""Learning histories: the file AD is trained on, and the window sampler that reads it.

One HDF5 file per dataset, self-describing::

    attrs:    format="adkit-histories", version, env, source, seed, config (YAML), created
    tasks        (n_tasks, task_dim)              int64
    states       (n_tasks, n_streams, n_steps, 2) int8   position before the action
    actions      (n_tasks, n_streams, n_steps)    int8
    rewards      (n_tasks, n_streams, n_steps)    float32
    next_states  (n_tasks, n_streams, n_steps, 2) int8   true position after the action
    dones        (n_tasks, n_streams, n_steps)    bool   the episode ended at this step

Datasets are stored contiguous and uncompressed so that :func:`load` can memory-map
them: opening an 8 M-transition file costs nothing until windows are drawn.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from adkit.data.tokens import returns_so_far
from adkit.io import atomic_path, open_hdf5

FORMAT = "adkit-histories"
VERSION = 1
ARRAYS = ("states", "actions", "rewards", "next_states", "dones")
DTYPES = {"states": np.int8, "actions": np.int8, "rewards": np.float32, "next_states": np.int8, "dones": np.bool_}


class HistoriesError(ValueError):
    """A histories file that cannot be used; the message names the file and the fix."""


@dataclass
class Histories:
    """Per-stream learning histories of one source algorithm on a set of tasks."""

    env: str  # task family name
    source: str  # algorithm that produced the histories
    tasks: np.ndarray  # (n_tasks, task_dim)
    states: np.ndarray  # (n_tasks, n_streams, n_steps, 2)
    actions: np.ndarray  # (n_tasks, n_streams, n_steps)
    rewards: np.ndarray  # (n_tasks, n_streams, n_steps)
    next_states: np.ndarray  # (n_tasks, n_streams, n_steps, 2)
    dones: np.ndarray  # (n_tasks, n_streams, n_steps)
    seed: int = 0
    config: str = ""  # resolved config (YAML) that produced the file
    meta: dict = field(default_factory=dict)  # format, version, created, ...

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_tasks, n_streams, n_steps)."""
        return tuple(self.actions.shape)

    def task_index(self, tasks) -> np.ndarray:
        """Row of each task (tuples or an array) in :attr:`tasks`; unknown tasks raise."""
        lookup = {tuple(int(v) for v in t): i for i, t in enumerate(self.tasks)}
        idx = []
        for t in np.asarray(tasks).reshape(len(tasks), -1):
            key = tuple(int(v) for v in t)
            if key not in lookup:
                raise KeyError(f"task {key} is not in these histories")
            idx.append(lookup[key])
        return np.array(idx, dtype=np.int64)

    def task_returns(self, tasks) -> np.ndarray:
        """The source's per-stream episode returns on ``tasks`` ``(n_tasks * n_streams, n_episodes)``."""
        ret = self.episode_returns()[self.task_index(tasks)]  # (n_tasks, n_streams, n_episodes)
        return ret.reshape(-1, ret.shape[-1])

    def episode_returns(self) -> np.ndarray:
        """Return of every complete episode ``(n_tasks, n_streams, n_episodes)``.

        Episodes are cut at ``dones``; all streams share the same fixed horizon.
        """
        ends = np.flatnonzero(self.dones[0, 0])
        if len(ends) == 0:
            return np.zeros(self.shape[:2] + (0,), dtype=np.float32)
        horizon = int(ends[0]) + 1
        n_ep = self.shape[2] // horizon
        r = np.asarray(self.rewards[:, :, : n_ep * horizon], dtype=np.float32)
        return r.reshape(*self.shape[:2], n_ep, horizon).sum(-1)


def save(h: Histories, path: str | Path) -> Path:
    """Write ``h`` to ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION, env=h.env, source=h.source, seed=int(h.seed),
                           config=h.config, created=_dt.datetime.now(_dt.timezone.utc).isoformat())
            f.create_dataset("tasks", data=np.asarray(h.tasks, dtype=np.int64))
            for name in ARRAYS:
                f.create_dataset(name, data=np.asarray(getattr(h, name), dtype=DTYPES[name]))
    return path


def _fail(path: Path, why: str) -> HistoriesError:
    return HistoriesError(f"{path}: {why}. Re-create it with `adkit collect -c CONFIG -o {path}` "
                          "(or notebook 01_train).")


def load(path: str | Path, mmap: bool = True) -> Histories:
    """Open a histories file, validating format, version and shapes.

    With ``mmap`` the arrays are memory-mapped (read lazily); otherwise read into memory.
    A missing, truncated, foreign or version-mismatched file raises :class:`HistoriesError`.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such histories file")
    with open_hdf5(path, FORMAT, VERSION, _fail) as f:
        missing = [n for n in ("tasks",) + ARRAYS if n not in f]
        if missing:
            raise _fail(path, f"missing datasets {missing}")
        shape = f["actions"].shape
        for name in ARRAYS:
            if f[name].shape[:3] != shape:
                raise _fail(path, f"dataset {name} has shape {f[name].shape}, expected {shape} first")
        arrays = {name: _read(f[name], path, mmap) for name in ARRAYS}
        attrs = dict(f.attrs)
        try:
            tasks = f["tasks"][()]
        except OSError:
            raise _fail(path, "dataset tasks cannot be read (truncated)") from None
    return Histories(env=str(attrs["env"]), source=str(attrs["source"]), tasks=tasks, seed=int(attrs["seed"]),
                     config=str(attrs.get("config", "")), meta={k: attrs[k] for k in ("format", "version", "created")
                                                                   if k in attrs}, **arrays)


def _read(ds: h5py.Dataset, path: Path, mmap: bool) -> np.ndarray:
    offset = ds.id.get_offset()
    if mmap and offset is not None and ds.chunks is None and ds.compression is None:
        try:
            return np.memmap(path, mode="r", dtype=ds.dtype, shape=ds.shape, offset=offset)
        except ValueError:
            raise _fail(path, f"dataset {ds.name} runs past the end of the file (truncated)") from None
    try:
        return ds[()]
    except OSError:
        raise _fail(path, f"dataset {ds.name} cannot be read (truncated)") from None


def stride_episodes(arrays: dict[str, np.ndarray], stride: int) -> dict[str, np.ndarray]:
    """Every ``stride``-th episode of each stream, as ``stride`` shorter streams (one per phase).

    ``arrays`` are ``(tasks, streams, steps, ...)``; the result is ``(tasks, streams * stride,
    steps', ...)`` where phase ``p`` of stream ``s`` holds episodes ``p, p + stride, ...``.
    A history thinned this way improves ``stride`` times faster per episode, and AD
    distilled from it learns faster in context than the source did (the AD paper's
    observation that AD can be more data-efficient than its source). Episodes must all
    have one length (true of every task family here: fixed horizons); a trailing
    incomplete episode and the episodes beyond a multiple of ``stride`` are dropped.
    """
    if stride < 1:
        raise ValueError(f"episode stride must be >= 1, got {stride}")
    if stride == 1:
        return arrays
    dones = arrays["dones"]
    n_t, n_s, n_steps = dones.shape
    ends = np.flatnonzero(dones[0, 0])
    horizon = int(ends[0]) + 1 if len(ends) else n_steps + 1
    n_ep = n_steps // horizon
    regular = np.zeros(n_ep * horizon, dtype=bool)
    regular[horizon - 1::horizon] = True
    if n_ep == 0 or not (dones[..., : n_ep * horizon] == regular).all():
        raise ValueError("episode stride needs episodes of one fixed length in every stream")
    per_phase = n_ep // stride
    if per_phase == 0:
        raise ValueError(f"episode stride {stride} is larger than the {n_ep} episodes of each stream")
    out = {}
    for name, a in arrays.items():
        rest = a.shape[3:]
        a = a[:, :, : per_phase * stride * horizon].reshape(n_t, n_s, per_phase, stride, horizon, *rest)
        a = np.moveaxis(a, 3, 2)  # (tasks, streams, stride, per_phase, horizon, ...)
        out[name] = np.ascontiguousarray(a.reshape(n_t, n_s * stride, per_phase * horizon, *rest))
    return out


class WindowSampler:
    """Draws training sequences of consecutive transitions from chosen (task, stream) pairs.

    Like the published AD code, a sequence may start at any offset of a stream
    (not only at episode starts). Each sequence is ``seq_len`` transitions; the
    model predicts the action of every transition from those before it.

    Args:
        h: the histories.
        task_rows: rows of ``h.tasks`` to draw from (the train tasks).
        streams: stream indices to draw from (train or validation streams).
        seq_len: transitions per sequence.
        seed: seed of the sampler's own generator.
        episode_stride: draw from every ``k``-th episode of each stream (see :func:`stride_episodes`).
    """

    def __init__(self, h: Histories, task_rows, streams, seq_len: int, seed: int = 0, episode_stride: int = 1):
        self.h, self.seq_len = h, seq_len
        self.task_rows = np.asarray(task_rows, dtype=np.int64)
        self.streams = np.asarray(streams, dtype=np.int64)
        if len(self.task_rows) == 0 or len(self.streams) == 0:
            raise ValueError("the sampler needs at least one task and one stream")
        # Materialise only the rows used (memory-mapped files stay lazy elsewhere).
        sel = np.ix_(self.task_rows, self.streams)
        arrays = {name: np.ascontiguousarray(getattr(h, name)[sel]) for name in ARRAYS}
        self.arrays = stride_episodes(arrays, episode_stride)
        dones = torch.from_numpy(self.arrays["dones"])
        starts = torch.cat([torch.ones_like(dones[..., :1]), dones[..., :-1]], -1)  # (tasks, streams, steps)
        self.arrays["episode_return"] = returns_so_far(torch.from_numpy(self.arrays["rewards"]), starts).numpy()
        n_steps = self.arrays["actions"].shape[2]
        if seq_len > n_steps:
            raise ValueError(f"seq_len {seq_len} is longer than the {n_steps} steps of each stream"
                             + (f" at episode stride {episode_stride}" if episode_stride > 1 else ""))
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A batch of sequences: ``states``/``next_states`` ``(B, L, 2)``, ``actions`` ``(B, L)``,
        ``rewards`` ``(B, L)``, ``dones`` ``(B, L)``, ``episode_return`` ``(B, L)`` (the episode's return
        so far) and ``positions`` ``(B, L)`` (step in stream)."""
        n_t, n_s, n_steps = self.arrays["actions"].shape
        t = self.rng.integers(0, n_t, batch_size)
        s = self.rng.integers(0, n_s, batch_size)
        start = self.rng.integers(0, n_steps - self.seq_len + 1, batch_size)
        pos = start[:, None] + np.arange(self.seq_len)  # (B, L)
        out = {name: torch.from_numpy(arr[t[:, None], s[:, None], pos]) for name, arr in self.arrays.items()}
        out["positions"] = torch.from_numpy(pos)
        return out
