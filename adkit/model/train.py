"""``adkit train``: fit the AD transformer to learning histories.

Writes into the run directory: ``model.safetensors`` + ``model.json`` (the
checkpoint), ``config.yaml`` (the resolved config), ``train_log.csv`` (loss and
action accuracy, train and validation), and ``train_state.safetensors`` +
``train_state.json`` (optimizer and sampler state, to resume). Every file is
written atomically, so a crash loses at most the steps since the last save.

Runs unchanged under ``torchrun --nproc-per-node N -m adkit.cli train ...``
(DistributedDataParallel; gloo on CPU, nccl on GPUs): each process draws its
own batches, rank 0 validates and writes.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adkit import envs, threads
from adkit.compress.context import build, compress_window, query_attention
from adkit.compress.evict import KV, check_evictable, keep_mask
from adkit.compress.strategies import Compressor
from adkit.config import Config, TrainConfig, changed_fields, dump_config, load_config
from adkit.data.histories import Histories, WindowSampler
from adkit.data.tokens import Tokens
from adkit.io import atomic_path, write_text
from adkit.model.checkpoint import PENDING, CheckpointError, commit, load, recover, save
from adkit.model.transformer import ADTransformer
from adkit.paths import resolve
from adkit.progress import bar as progress_bar
from adkit.run import Run, task_split

LOG_FIELDS = ["step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


def seq_len(cfg: Config) -> int:
    """Transitions per training sequence (the last-position loss and re-encoded compressed windows
    always use ``n_transit``: one decision's context)."""
    if cfg.train.loss == "last" or (cfg.compress.strategy != "none" and cfg.compress.kv == "reencode"):
        return cfg.model.n_transit
    return cfg.train.seq_len or 2 * cfg.model.n_transit


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor, mode: str, smoothing: float = 0.0):
    """Cross-entropy and action accuracy over every position (``all``) or the last (``last``)."""
    if mode == "last":
        logits, targets = logits[:, -1:], targets[:, -1:]
    flat = logits.reshape(-1, logits.shape[-1])  # (B*L, A)
    loss = F.cross_entropy(flat, targets.reshape(-1), label_smoothing=smoothing)
    acc = (flat.argmax(-1) == targets.reshape(-1)).float().mean()
    return loss, acc


def lr_at(progress: float, t: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``progress`` 1."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cos)


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms or the reward projection)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas)


def samplers(cfg: Config, h: Histories, rank: int = 0) -> tuple[WindowSampler, WindowSampler]:
    """Train and validation samplers: train tasks only; validation on held-out streams."""
    train_tasks, _ = task_split(cfg)
    rows = h.task_index(train_tasks)
    n_streams = h.shape[1]
    n_val = max(1, int(round(n_streams * cfg.train.val_streams))) if n_streams > 1 else 0
    train_streams = np.arange(n_streams - n_val)
    val_streams = np.arange(n_streams - n_val, n_streams) if n_val else train_streams
    L = seq_len(cfg) + 1  # one more transition for the shifted targets
    seed = cfg.train.seed * 1000 + rank
    k = cfg.train.episode_stride
    return (WindowSampler(h, rows, train_streams, L, seed=seed, episode_stride=k),
            WindowSampler(h, rows, val_streams, L, seed=seed + 500, episode_stride=k))


def window_compressor(cfg: Config, scorer=None, **kw) -> Compressor | None:
    """The compressor of ``compress.strategy`` at ``compress.budget`` (``None`` for full windows);
    ``kw`` go to its constructor (e.g. the ``profile`` rule)."""
    c = cfg.compress
    if c.strategy == "none":
        return None
    if c.strategy in ("full", "oracle"):
        raise ValueError(f"compress.strategy {c.strategy!r} cannot compress training windows; use 'none' for "
                         "full windows or a strategy of adkit.compress")
    if not 1 <= c.budget < cfg.model.n_transit:
        raise ValueError(f"compress.budget must be 1..{cfg.model.n_transit - 1} transitions with compress.strategy "
                         f"{c.strategy!r}, got {c.budget}")
    if c.kv not in KV:
        raise ValueError(f"compress.kv must be 'reencode' or 'evict', got {c.kv!r}")
    compressor = build(c.strategy, c.budget, scorer, cfg.env.name, **kw)
    if c.kv == "evict":
        check_evictable(compressor, cfg.model.n_transit)
        if c.positions == "renumber":
            raise ValueError("compress.kv 'evict' trains whole windows at the stream's own positions (one keep mask "
                             "per query); a renumbered context gives each query other positions: use "
                             "compress.positions 'original', or compress.kv 'reencode' to train renumbered")
    if compressor.needs_attention and scorer is None:
        raise ValueError(f"compress.strategy {c.strategy!r} scores transitions by attention: pass scorer= (the "
                         "full-context model whose attention picks what each window keeps)")
    return compressor


def check_resumable(run: Run) -> None:
    """Refuse to resume ``run`` with a config that trains something else than it did."""
    changed = changed_fields(load_config(run.config_file), run.cfg)
    if changed:
        raise ValueError(f"{run.dir} holds a run trained with another config ({', '.join(changed)}); resume it "
                         f"with its own config ({run.config_file}) or train into a new run directory")


class Trainer:
    """Owns the model, optimizer, samplers and run directory of one training run.

    With ``compress.strategy`` every training and validation window is compressed to
    ``compress.budget`` earlier transitions by :func:`adkit.compress.context.compress_window`, the
    same selection a compressed rollout makes; attention-based strategies score with
    ``scorer`` (a fixed, full-context model), and ``compressor_kw`` go to the strategy. With
    ``compress.kv: evict`` windows stay whole and each query attends to what an evicting cache
    would hold there (:func:`adkit.compress.evict.keep_mask`; attention-based strategies replay the
    eviction with ``scorer``'s attention on the window, per layer and head): every position keeps its target.
    """

    def __init__(self, run: Run, h: Histories, progress: bool = True, scorer=None,
                 compressor_kw: dict | None = None):
        cfg = run.cfg
        if envs.spec(h.env).name != envs.spec(cfg.env.name).name:
            raise ValueError(f"histories are for {h.env!r} but the config trains {cfg.env.name!r}")
        horizon, memory = envs.spec(cfg.env.name).horizon, cfg.collect.psrl.memory
        if cfg.collect.source == "psrl" and cfg.model.n_transit < horizon:
            raise ValueError(f"model.n_transit is {cfg.model.n_transit}, shorter than one {cfg.env.name} episode "
                             f"({horizon} steps), but the psrl source acts on whole remembered episodes ({memory}): "
                             f"a decision could not see what it imitates; set model.n_transit to at least {horizon} "
                             f"({memory * horizon} sees all {memory})")
        if cfg.train.loss not in ("all", "last"):
            raise ValueError(f"train.loss must be 'all' or 'last', got {cfg.train.loss!r}")
        self.run, self.cfg, self.t, self.run_dir, self.progress = run, cfg, cfg.train, run.dir, progress
        self.compressor, self.scorer = window_compressor(cfg, scorer, **(compressor_kw or {})), scorer
        self.compress_rng = torch.Generator().manual_seed(cfg.train.seed)  # random / exponential strategies
        self.ddp = distributed()
        if self.ddp and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                                   else "cpu")
        if self.t.threads:
            threads.configure(self.t.threads)
        torch.manual_seed(self.t.seed)  # identical initial weights on every rank
        self.model = ADTransformer(cfg.model, cfg.env.name, cfg.compress.positions).to(self.device)
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model) if self.ddp else self.model)
        self.opt = make_optimizer(self.model, self.t)
        self.train_sampler, self.val_sampler = samplers(cfg, h, self.rank)
        self.step, self.seconds = 0, 0.0
        self.board = tensorboard_writer(run) if cfg.train.tensorboard and self.rank == 0 else None
        if self.rank == 0 and self.run_dir.exists():
            recover(self.run_dir)  # finish (or drop) a checkpoint a crash interrupted, once
        if self.ddp:
            dist.barrier()
        if run.train_state_json.exists():
            check_resumable(run)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run.config_file, dump_config(cfg))
        self._maybe_resume()

    # ---- state ------------------------------------------------------------------------------------
    def _maybe_resume(self) -> None:
        meta_file = self.run.train_state_json
        if not meta_file.exists():
            if self.t.init:
                self._start_from(self.t.init)
            if self.rank == 0:
                self._trim_log()  # a crash before the first checkpoint: rows of steps not kept
            return
        fix = "delete the run directory to start over, or train into a new one"
        try:
            meta = json.loads(meta_file.read_text())
            tensors = load_file(str(self.run.train_state))
        except (OSError, ValueError, UnicodeDecodeError, SafetensorError) as e:
            raise CheckpointError(f"{meta_file} or {self.run.train_state} is truncated or foreign "
                                  f"({e.__class__.__name__}: {e}); {fix}") from None
        self.model.load_state_dict(load(self.run_dir).state_dict())
        torch.set_rng_state(tensors.pop("torch_rng"))
        self.compress_rng.set_state(tensors.pop("compress_rng"))
        state = {int(k.split(".")[0]): {} for k in tensors}
        for key, value in tensors.items():
            i, name = key.split(".", 1)
            state[int(i)][name] = value
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        # each rank continues its own batch stream (a run resumed with more ranks reuses them in turn)
        self.train_sampler.rng.bit_generator.state = meta["sampler_rng"][self.rank % len(meta["sampler_rng"])]
        self.val_sampler.rng.bit_generator.state = meta["val_sampler_rng"]  # the same validation batches
        self.step, self.seconds = meta["step"], meta["seconds"]
        if self.rank == 0:
            self._trim_log()

    def _start_from(self, path: str) -> None:
        """Take the weights of the run at ``path`` (fine-tuning); it must be this model's family and architecture."""
        start = load(resolve(path))
        if start.env != self.model.env or start.cfg != self.cfg.model:
            raise ValueError(f"train.init: {path} holds a {start.env} model with {start.cfg}, this run trains a "
                             f"{self.model.env} model with {self.cfg.model}; start from a run of the same profile")
        self.model.load_state_dict(start.state_dict())

    def _trim_log(self) -> None:
        """Keep the log consistent with the checkpoint: rows up to its step, no torn last line."""
        path = self.run.train_log
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        if not lines or lines[0] != ",".join(LOG_FIELDS):
            path.unlink()  # torn before its header was whole: start it again
            return
        kept = [lines[0]] + [ln for ln in lines[1:] if _log_step(ln) is not None and _log_step(ln) <= self.step]
        if kept != lines:
            write_text(path, "\n".join(kept) + "\n")

    def _sampler_states(self) -> list[dict]:
        """Every rank's training sampler state, in rank order (a collective under torchrun)."""
        mine = self.train_sampler.rng.bit_generator.state
        if not self.ddp:
            return [mine]
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, mine)
        return states

    def save(self, sampler_states: list[dict] | None = None) -> None:
        """Checkpoint weights and training state as one unit (:func:`adkit.model.checkpoint.commit`). Every
        rank calls it (the sampler states are gathered from all); rank 0 writes."""
        sampler_states = sampler_states or self._sampler_states()
        if self.rank != 0:
            return
        names = save(self.model, self.run_dir, suffix=PENDING)
        opt = self.opt.state_dict()
        tensors = {f"{i}.{name}": v.detach().cpu().contiguous()
                   for i, s in opt["state"].items() for name, v in s.items()}
        tensors["torch_rng"] = torch.get_rng_state()  # dropout noise continues where it stopped
        tensors["compress_rng"] = self.compress_rng.get_state()
        with atomic_path(self.run_dir / (self.run.train_state.name + PENDING)) as tmp:
            save_file(tensors, str(tmp))
        meta = {"step": self.step, "seconds": self.seconds, "param_groups": opt["param_groups"],
                "sampler_rng": sampler_states,
                "val_sampler_rng": self.val_sampler.rng.bit_generator.state}
        write_text(self.run_dir / (self.run.train_state_json.name + PENDING), json.dumps(meta))
        commit(self.run_dir, [*names, self.run.train_state.name, self.run.train_state_json.name], self.step)

    # ---- loop -------------------------------------------------------------------------------------
    def batch(self, sampler: WindowSampler) -> tuple[Tokens, torch.Tensor | None]:
        """One batch of tokens with targets from ``sampler``, compressed if the run compresses, and the
        per-query keep mask of an evicting run (``(B, L, L)``, per layer and head for attention-scored
        strategies; else None)."""
        c = self.cfg.compress
        size = c.batch or self.t.batch_size if self.compressor is not None and c.kv == "reencode" else self.t.batch_size
        tokens, keep = Tokens.from_transitions(sampler.sample(size)), None
        if self.compressor is not None and c.kv == "evict":
            feed = query_attention(self.scorer, tokens, per_head=True) if self.compressor.needs_attention else None
            keep = keep_mask(self.compressor, tokens, self.cfg.model.n_transit, feed, self.compress_rng).to(self.device)
        elif self.compressor is not None:
            tokens = compress_window(self.compressor, tokens, c.positions, self.scorer, self.compress_rng)
        return tokens.to(self.device), keep

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        self.model.eval()
        losses, accs = [], []
        for _ in range(self.t.val_batches):
            tokens, keep = self.batch(self.val_sampler)
            loss, acc = loss_and_accuracy(self.model(**tokens, keep=keep), tokens.targets, self.t.loss)
            losses.append(loss.item())
            accs.append(acc.item())
        self.model.train()
        return float(np.mean(losses)), float(np.mean(accs))

    def _log(self, row: dict) -> None:
        path = self.run.train_log
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)

    def fit(self, time_budget_s: float = 0.0, until: int | None = None) -> Path:
        """Train until ``train.steps`` (or ``time_budget_s`` seconds, if given); returns the run dir.

        With a time budget the learning-rate schedule follows whichever of steps
        or time is further along, so the run still ends with a decayed rate.
        ``until`` stops this call early at that step (checkpointed); a later call resumes.
        """
        self.model.train()
        bar = progress_bar(total=self.t.steps, initial=self.step, desc="train", disable=not self.progress or self.rank,
                   mininterval=1.0)
        start = time.perf_counter() - self.seconds
        run_loss, run_acc = [], []
        while self.step < min(self.t.steps, until or self.t.steps):
            self.seconds = time.perf_counter() - start
            progress = self.step / self.t.steps
            if time_budget_s:
                if self.ddp:
                    self.seconds = shared_clock(self.seconds, self.device)
                if self.seconds >= time_budget_s:
                    break
                progress = max(progress, self.seconds / time_budget_s)
            threads.rebalance()
            lr = lr_at(progress, self.t, self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr
            tokens, keep = self.batch(self.train_sampler)
            loss, acc = loss_and_accuracy(self.net(**tokens, keep=keep), tokens.targets, self.t.loss,
                                          self.t.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
            self.opt.step()
            self.step += 1
            run_loss.append(loss.item())
            run_acc.append(acc.item())
            bar.update(1)
            if self.step % self.t.val_every == 0 or self.step in (self.t.steps, until):
                self._checkpoint(lr, run_loss, run_acc, time.perf_counter() - start, bar)
                run_loss, run_acc = [], []
        if run_loss:  # stopped by the time budget between checkpoints
            self._checkpoint(lr, run_loss, run_acc, time.perf_counter() - start, bar)
        bar.close()
        return self.run_dir

    def _checkpoint(self, lr, run_loss, run_acc, seconds, bar) -> None:
        self.seconds = seconds
        sampler_states = self._sampler_states()  # every rank takes part
        if self.rank != 0:
            return
        val_loss, val_acc = self.validate()
        self._log({"step": self.step, "lr": f"{lr:.3g}", "train_loss": f"{np.mean(run_loss):.4f}",
                   "train_acc": f"{np.mean(run_acc):.4f}", "val_loss": f"{val_loss:.4f}",
                   "val_acc": f"{val_acc:.4f}", "seconds": f"{seconds:.1f}"})
        bar.set_postfix(loss=f"{np.mean(run_loss):.3f}", val=f"{val_loss:.3f}", acc=f"{val_acc:.2f}")
        if self.board is not None:
            scalars = {"loss/train": np.mean(run_loss), "loss/val": val_loss, "accuracy/train": np.mean(run_acc),
                       "accuracy/val": val_acc, "lr": lr}
            for tag, value in scalars.items():
                self.board.add_scalar(tag, float(value), self.step)
            self.board.flush()
        self.save(sampler_states)


def _log_step(line: str) -> int | None:
    """The step of one ``train_log.csv`` row, None for a torn one."""
    fields = line.split(",")
    if len(fields) != len(LOG_FIELDS):
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


def tensorboard_writer(run: Run):
    """A TensorBoard ``SummaryWriter`` on ``run.tensorboard`` (TensorBoard is optional: a clear error without it)."""
    try:
        board = importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        raise ValueError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return board.SummaryWriter(str(run.tensorboard))


def distributed() -> bool:
    """Whether this process is one rank of several (torchrun sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def shared_clock(seconds: float, device=None) -> float:
    """The slowest rank's ``seconds``, on every rank of a DDP run: with a time budget each rank must
    stop at the same step with the same learning rate, which their own clocks would not agree on
    (a rank stopping alone would leave the others waiting in their next all-reduce)."""
    clock = torch.tensor([seconds], dtype=torch.float64, device=device)  # (1,) where the process group reduces
    dist.all_reduce(clock, op=dist.ReduceOp.MAX)
    return float(clock)


def replica_checksum(model: torch.nn.Module) -> float:
    """Sum of all parameters (float64): equal across DDP replicas that stayed in sync."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def train(run: Run, h: Histories, progress: bool = True, time_budget_s: float = 0.0,
          until: int | None = None, scorer=None) -> Path:
    """Train (or resume) ``run``; under torchrun also records every replica's checksum.
    ``scorer``: the full-context model an attention-scored ``compress.strategy`` scores with."""
    trainer = Trainer(run, h, progress=progress, scorer=scorer)
    trainer.fit(time_budget_s, until)
    if trainer.ddp:
        sums = [None] * dist.get_world_size()
        dist.all_gather_object(sums, replica_checksum(trainer.model))
        if trainer.rank == 0:
            write_text(run.dir / "replicas.json", json.dumps({"checksums": sums}) + "\n")
        dist.destroy_process_group()
    return run.dir
