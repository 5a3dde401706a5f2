"""Source algorithms whose learning histories AD distils."""

from __future__ import annotations

from adkit.config import CollectConfig
from adkit.envs import GridVectorEnv
from adkit.sources.base import Learner, record
from adkit.sources.tabular import NoiseLearner, PosteriorSampler, QLearner

SOURCES = ("ppo", "qlearning", "noise", "psrl")


def make_learner(env: GridVectorEnv, cfg: CollectConfig) -> Learner:
    """The learner named by ``cfg.source``, built for every sub-env of ``env``."""
    if cfg.source == "ppo":
        from adkit.sources.ppo import PPOLearner  # torch-heavy; imported on demand

        return PPOLearner(env, cfg.ppo, cfg.steps, cfg.seed)
    if cfg.source == "qlearning":
        return QLearner(env, cfg.qlearning, cfg.steps, cfg.seed)
    if cfg.source == "noise":
        return NoiseLearner(env, cfg.noise, cfg.steps, cfg.seed)
    if cfg.source == "psrl":
        return PosteriorSampler(env, cfg.psrl, cfg.steps, cfg.seed)
    raise ValueError(f"unknown source {cfg.source!r}; choose one of {SOURCES}")


__all__ = ["SOURCES", "Learner", "make_learner", "record"]
