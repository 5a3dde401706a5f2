"""Checkpoints: safetensors weights plus a readable ``model.json``; loading never unpickles.

``model.json`` holds the format, the architecture (:class:`adkit.config.ModelConfig`), the task
family the model reads and how it numbers a compressed context's positions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adkit.config import ModelConfig
from adkit.io import atomic_path, write_text
from adkit.model.transformer import ADTransformer

WEIGHTS, MODEL_JSON, CKPT_FORMAT, CKPT_VERSION = "model.safetensors", "model.json", "adkit-model", 2
HINT = "train one with `adkit train -c CONFIG --run-dir DIR` (or notebook 01_train)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the fix."""


def save(model: ADTransformer, run_dir, suffix: str = "") -> list[str]:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` atomically (each name + ``suffix``,
    e.g. :data:`PENDING` for a training checkpoint to :func:`commit`); returns the names."""
    run_dir = Path(run_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / (WEIGHTS + suffix)) as tmp:
        save_file(state, str(tmp))
    meta = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "env": model.env, "positions": model.positions,
            "model": dataclasses.asdict(model.cfg)}
    write_text(run_dir / (MODEL_JSON + suffix), json.dumps(meta, indent=2) + "\n")
    if not suffix:  # a model saved outside a training checkpoint: no commit record speaks for it any more
        (run_dir / COMMIT).unlink(missing_ok=True)
    return [WEIGHTS, MODEL_JSON]


def _meta(meta_file: Path) -> dict:
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file} is not valid JSON ({e}); {HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{meta_file} is not an adkit model file; {HINT}")
    if meta.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{meta_file} has format version {meta.get('version')}, this adkit reads "
                              f"{CKPT_VERSION}; {HINT}")
    return meta


def load(path, device: str | torch.device = "cpu") -> ADTransformer:
    """Load a model from a run directory (or its ``model.safetensors``), in eval mode.

    Raises :class:`CheckpointError` (or ``FileNotFoundError``) with a clear message
    for a missing, truncated, foreign or mismatched checkpoint.
    """
    path = Path(path)
    run_dir = path.parent if path.suffix == ".safetensors" else path
    weights, meta_file = run_dir / WEIGHTS, run_dir / MODEL_JSON
    if not weights.exists() or not meta_file.exists():
        raise FileNotFoundError(f"no checkpoint in {run_dir.resolve()} (needs {WEIGHTS} and {MODEL_JSON}); {HINT}")
    meta = _meta(meta_file)
    try:
        cfg = ModelConfig(**meta["model"])
        model = ADTransformer(cfg, meta["env"], meta["positions"]).to(device)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{meta_file}: model config does not match this adkit ({e})") from None
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is truncated or not a safetensors file ({e}); {HINT}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise CheckpointError(f"{weights} does not match the config in {meta_file}: tensors {diff[:5]} differ")
    model.load_state_dict(state)
    return model.eval()


# ---- a training checkpoint as one atomic unit -----------------------------------------------------------
COMMIT = "checkpoint.json"  # written last: the step and the sha256 of every file of the checkpoint
PENDING = ".next"  # suffix of a file written for the next checkpoint, not yet in place


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def commit(run_dir: Path, names: list[str], step: int) -> None:
    """Make the files ``NAME.next`` in ``run_dir`` the checkpoint, all or nothing.

    The commit record (:data:`COMMIT`, with each file's hash) is written atomically first; the files
    are then moved into place. A crash before the record leaves the previous checkpoint whole (the
    ``.next`` files are dropped by :func:`recover`); a crash after it is finished by :func:`recover`.
    """
    record = {"step": step, "files": {name: _sha256(run_dir / (name + PENDING)) for name in names}}
    write_text(run_dir / COMMIT, json.dumps(record, indent=1) + "\n")
    for name in names:
        os.replace(run_dir / (name + PENDING), run_dir / name)


def recover(run_dir: Path) -> None:
    """Bring ``run_dir`` to its last committed checkpoint (see :func:`commit`): move in the pending files the
    record names, drop the others. A no-op when nothing is pending. Only the training process calls it
    (:class:`adkit.model.train.Trainer`, rank 0); :func:`load` reads what is in place."""
    record_file = run_dir / COMMIT
    if not record_file.exists() or not any(run_dir.glob("*" + PENDING)):
        return  # nothing was interrupted
    try:
        record = json.loads(record_file.read_text())
        files = dict(record["files"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{record_file} is unreadable ({e}); train into a new run directory") from None
    for name, digest in files.items():
        pending = run_dir / (name + PENDING)
        if pending.exists() and _sha256(pending) == digest:
            os.replace(pending, run_dir / name)  # committed but not yet moved when the process stopped
    for stale in run_dir.glob("*" + PENDING):  # written for a checkpoint that was never committed
        stale.unlink()
