"""Run configuration: one YAML file, nested dataclasses, every field documented here.

A profile (``config/profiles/*.yaml``) sets only what differs from the defaults
below. Unknown keys are an error, so a typo never silently falls back to a default.

>>> cfg = load_config("config/profiles/quick.yaml")
>>> cfg.model.n_transit, cfg.collect.source
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from adkit.paths import home, resolve

PACKAGE_PROFILES = Path(__file__).resolve().parent / "profiles"  # the built-in profiles, shipped in the wheel


@dataclass
class EnvConfig:
    name: str = "darkroom"  # task family: darkroom, darkroom-hard, darkroom-permuted, key-to-door
    split_seed: int = 0  # seed of the published train/test task split
    train_ratio: float = 0.9  # share of tasks used for training (the rest are held out)
    train_tasks: int = 0  # use only the first N train tasks of the split (0: all); Key-to-Door has 5,905
    test_tasks: int = 0  # use only the first N held-out tasks of the split (0: all)


@dataclass
class PPOConfig:
    """PPO as the published AD data uses it (stable-baselines3 defaults, DICP rollout sizes)."""

    lr: float = 3e-4  # Adam learning rate
    n_steps: int = 20  # steps per stream between updates (one Darkroom episode)
    batch_size: int = 50  # minibatch size per task
    n_epochs: int = 20  # passes over each rollout
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip_range: float = 0.2  # PPO ratio clip
    ent_coef: float = 0.0  # entropy bonus
    vf_coef: float = 0.5  # value-loss weight
    max_grad_norm: float = 0.5  # gradient clipping (per task)
    hidden: int = 64  # width of the two tanh hidden layers (separate policy and value nets)
    encoding: str = "rowcol"  # network input: "raw" (row, col) floats as SB3, or "rowcol" one-hots (learns sooner)


@dataclass
class QLearningConfig:
    lr: float = 0.5  # tabular step size
    gamma: float = 0.9  # discount
    eps_start: float = 1.0  # epsilon-greedy exploration at the first step
    eps_end: float = 0.05  # ... annealed linearly to this at the last step
    optimistic_init: float = 0.0  # initial Q-value of every (state, action), and of unvisited ones when planning
    planning_sweeps: int = 0  # Dyna-Q: value-iteration sweeps over the learned model at each episode end (0: none)


@dataclass
class NoiseConfig:
    eps_start: float = 1.0  # probability of a uniform-random action at the first episode
    eps_end: float = 0.0  # ... annealed linearly to this at the last episode
    anneal_fraction: float = 1.0  # share of the history over which the noise is annealed


@dataclass
class PSRLConfig:
    memory: int = 4  # episodes remembered (match the model's context: n_transit / horizon)
    eps: float = 0.05  # probability of a uniform-random action


SOURCE_SETTINGS = ("ppo", "qlearning", "noise", "psrl")  # CollectConfig sections: each source's own settings


@dataclass
class CollectConfig:
    source: str = "ppo"  # learning algorithm whose histories are distilled: ppo, qlearning, noise, psrl
    streams: int = 100  # independent learning streams per task
    steps: int = 1000  # environment steps per stream (Darkroom: 50 episodes of 20)
    seed: int = 0  # seed of the source algorithm (networks, exploration)
    workers: int = 1  # processes that collect disjoint slices of the tasks at once, one torch thread each
    ppo: PPOConfig = field(default_factory=PPOConfig)
    qlearning: QLearningConfig = field(default_factory=QLearningConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    psrl: PSRLConfig = field(default_factory=PSRLConfig)


@dataclass
class TrainConfig:
    steps: int = 3000  # optimiser steps
    batch_size: int = 64  # sequences per step (per process under torchrun)
    seq_len: int = 0  # transitions per training sequence; 0 means 2 * n_transit
    loss: str = "all"  # "all": an action target at every position; "last": last position only (DICP)
    episode_stride: int = 1  # train on one episode in k of each stream (k phases): AD learns faster than its source
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay (matrices only)
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    min_lr_ratio: float = 0.1  # final learning rate as a share of the peak
    grad_clip: float = 1.0  # max global gradient norm
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    val_every: int = 250  # steps between validation passes and checkpoints
    val_batches: int = 4  # batches per validation pass (held-out streams of train tasks)
    val_streams: float = 0.05  # share of each train task's streams kept for validation
    seed: int = 0  # seed of initialisation and batch sampling
    init: str = ""  # start from this run's weights (its folder or model.safetensors): fine-tuning; "": random init
    threads: int = 0  # torch threads of this run; 0: $ADKIT_THREADS or a fair share of the cores (adkit.threads)
    extra_seeds: list[int] = field(default_factory=list)  # more training seeds (notebook 01: <run>/seeds/seedS)
    tensorboard: bool = False  # also write TensorBoard event files to <run>/tensorboard (needs the tensorboard package)


@dataclass
class ModelConfig:
    """The AD transformer's architecture (see :mod:`adkit.model`)."""

    n_transit: int = 80  # transitions a decision attends to per layer (sliding attention window)
    tf_n_embd: int = 32  # residual width
    tf_n_layer: int = 4  # transformer blocks
    tf_n_head: int = 4  # attention heads per block
    tf_n_inner: int = 128  # MLP hidden width
    tf_dropout: float = 0.1  # dropout on embeddings, residual branches and the MLP
    tf_attn_dropout: float = 0.1  # dropout on attention weights
    rope_base: float = 10000.0  # RoPE frequency base
    episode_step: bool = False  # also embed each transition's step within its episode (stream position mod horizon)
    episode_return: bool = False  # also embed its episode's return so far (0, 1, 2, 3+): Key-to-Door's key held or not


@dataclass
class CompressConfig:
    """Training on compressed windows, and how a compressed context is numbered (:mod:`adkit.compress`)."""

    strategy: str = "none"  # retrain on windows compressed by this adkit.compress strategy ("none": full windows)
    budget: int = 0  # earlier transitions each compressed window keeps (1 .. n_transit - 1, with a strategy)
    batch: int = 0  # re-encoded compressed windows per step; 0: train.batch_size (each gives budget + 1 targets)
    positions: str = "original"  # positions of a compressed context: "original" offsets or "renumber" 0..K
    # how a compressed context is kept, in training as in rollouts: "reencode" trains on compressed windows (the
    # kept transitions re-encoded); "evict" trains on whole windows where each query attends to what an evicting
    # key/value cache of `budget` transitions would hold (adkit.compress.evict.keep_mask), every position a target
    kv: str = "reencode"


@dataclass
class EvalConfig:
    episodes: int = 50  # in-context episodes per task (DICP: 50)
    seeds: int = 3  # evaluation seeds (streams) per held-out task
    greedy: bool = False  # argmax actions instead of sampling (DICP samples)
    batch_tasks: str = "test"  # which tasks to evaluate: test, train or all


@dataclass
class AttentionConfig:
    """The attention stage (``adkit attention``, notebooks 02 and 03)."""

    windows: int = 256  # training-style windows drawn from the train tasks' histories
    trajectories: int = 0  # rollout trajectories kept (held-out tasks x eval.seeds); 0: all
    decisions: list[int] = field(default_factory=list)  # rollout decision steps; empty: every episode start
    loo_samples: int = 32  # contexts of the leave-one-out importance check (x n_transit forward passes each)
    drop_counts: list[int] = field(default_factory=list)  # transitions the ablation drops; empty: 1, 2, 4, n/4, n/2
    figure_samples: int = 5  # samples per layer in the original figure set
    seed: int = 0  # seed of the sampled windows, rollouts and random drops


@dataclass
class StudyConfig:
    """The compression study (``adkit study``, notebooks 04 and 05). Budgets are fractions of
    ``model.n_transit`` (0.25 keeps 20 of 80 earlier transitions), so one profile serves every context."""

    compressors: list[str] = field(default_factory=list)  # training-free strategies; empty: every strategy
    budgets: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125, 0.0625])  # training-free budgets
    retrain_compressors: list[str] = field(default_factory=list)  # retrained; empty: original six, random, sink-recent
    retrain_budgets: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125])  # retrained budgets
    seeds: int = 3  # training seeds of retrained cells, evaluation seeds of training-free ones
    episodes: int = 0  # in-context episodes per rollout; 0: eval.episodes
    steps: int = 0  # training steps of every retrained model; 0: train.steps
    init: str = "scratch"  # retrained models start from "scratch" or from the run's own model ("run": fine-tuned)
    decisions: int = 16  # recorded decisions per stream for agreement and KL (training-free)
    kv: list[str] = field(default_factory=lambda: ["reencode", "evict"])  # compressed contexts kept as (compress.kv)
    workers: int = 1  # retrained cells trained at once on this machine (executor local), one process each
    executor: str = "local"  # where retrained cells run: "local" (this machine) or "ray" (pip install adkit[cluster])
    address: str = ""  # Ray cluster address with executor "ray" (e.g. "ray://head:10001"); empty: a local Ray instance

    def transitions(self, fractions: list[float], n_transit: int) -> list[int]:
        """Budgets in transitions kept: ``round(f * n_transit)`` each, at least 1, duplicates dropped."""
        bad = [f for f in fractions if not 0 < f < 1]
        if bad or not fractions:
            raise ValueError(f"study budgets are fractions of n_transit in (0, 1), got {list(fractions)}")
        return list(dict.fromkeys(max(1, round(f * n_transit)) for f in fractions))


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    profile: str = "custom"  # name of the profile this config came from

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or '<root>'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {where or '<root>'}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}".strip("."))
        elif typing.get_origin(hint) is tuple or hint is tuple:
            kwargs[name] = tuple(value)
        elif typing.get_origin(hint) is list:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"config {where}.{name} must be a list, got {value!r}".replace(" .", " "))
            kwargs[name] = list(value)
        elif hint in (int, float, bool, str) and (not isinstance(value, hint)
                                                  or (isinstance(value, bool) and hint is not bool)):
            if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool) and _number(value):
                value = float(value)  # YAML reads 3e-4 as a string
            else:
                raise ValueError(f"config {where}.{name} must be {hint.__name__}, got {value!r}".replace(" .", " "))
            kwargs[name] = value
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _number(value) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def from_dict(data: dict) -> Config:
    """A :class:`Config` from a (possibly partial) nested mapping."""
    return _build(Config, data or {}, "")


def profile_dirs() -> list[Path]:
    """Where named profiles are looked up, first hit wins: the project's ``config/profiles``
    (in a checkout, the built-in ones), then the built-in profiles inside the package."""
    return list(dict.fromkeys(d.resolve() for d in (home() / "config" / "profiles", PACKAGE_PROFILES) if d.is_dir()))


def resolve_profile(path_or_name: str | Path, skip: Path | None = None) -> Path:
    """A config path (relative ones also against the project home), or a profile name
    (``quick``, ``paper``, ``tiny``, ...) from :func:`profile_dirs`, other than ``skip`` (a project
    profile that extends the built-in one of its own name)."""
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml"):
        for candidate in (p, resolve(p)):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"config file not found: {p.resolve()}")
    for d in profile_dirs():
        candidate = d / f"{p.name}.yaml"
        if candidate.exists() and (skip is None or candidate.resolve() != skip.resolve()):
            return candidate
    names = sorted({q.stem for d in profile_dirs() for q in d.glob("*.yaml")})
    raise FileNotFoundError(f"no profile {str(path_or_name)!r}; profiles: {names} (or pass a .yaml path)")


def load_config(path_or_name: str | Path, overrides: dict | None = None) -> Config:
    """Load a YAML config (or a named profile) and apply nested ``overrides``."""
    path = resolve_profile(path_or_name)
    data = _read(path)
    data.setdefault("profile", path.stem)
    merge(data, overrides or {})
    return from_dict(data)


def _read(path: Path) -> dict:
    """A profile's mapping; ``extends: NAME`` starts from another profile and overrides it."""
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = _read(resolve_profile(base, skip=path))
    merged.pop("profile", None)
    merge(merged, data)
    return merged


def merge(base: dict, extra: dict) -> None:
    """Merge the nested mapping ``extra`` into ``base`` in place (``extra`` wins)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["compress.budget=20", "compress.strategy=recency"]`` -> nested config overrides (values read
    as YAML: numbers, booleans, strings, ``[0.5, 0.25]`` lists): what ``--set`` and the notebooks'
    ``overrides`` take."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes SECTION.FIELD=VALUE, got {pair!r}")
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return out


# Config keys (prefixes) that may differ when a run is resumed: they do not change what is trained.
RESUMABLE_CHANGES = ("profile", "eval.", "attention.", "study.", "train.steps", "train.threads", "train.val_every",
                     "train.extra_seeds", "train.tensorboard")


def changed_fields(old: Config, new: Config, allowed: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
    """``"key: old -> new"`` for every field that differs, except keys starting with ``allowed``."""
    a, b = (flatten(c.to_dict()) for c in (old, new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and not k.startswith(allowed)]


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested mapping as ``{"section.field": value}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def provenance(cfg: Config | dict) -> dict:
    """What makes a histories file: the ``env`` section (family and task split) and the ``collect``
    section with the settings of its own source only (a config or its dict)."""
    d = cfg if isinstance(cfg, dict) else cfg.to_dict()
    env = {**dataclasses.asdict(EnvConfig()), **d.get("env", {})}  # files from before a field existed: its default
    collect = {**dataclasses.asdict(CollectConfig()), **d.get("collect", {})}
    own = {k: v for k, v in collect.items() if k not in SOURCE_SETTINGS or k == collect.get("source")}
    return {"env": _plain(env), "collect": _plain(own)}


def dataset_id(cfg: Config) -> str:
    """A short hash of :func:`provenance`: histories files are named by what made them."""
    text = json.dumps(provenance(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (tuples as lists)."""
    return yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x

