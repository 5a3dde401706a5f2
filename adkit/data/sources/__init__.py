"""Source algorithms whose learning histories AD distils."""

from __future__ import annotations

from adkit.config import CollectConfig
from adkit.data.loop import Learner
from adkit.data.sources.ppo import PPOLearner
from adkit.data.sources.tabular import KeyDoorSampler, NoiseLearner, PermutationSampler, PosteriorSampler, QLearner
from adkit.envs import GridVectorEnv

SOURCES = ("ppo", "qlearning", "noise", "psrl")


def make_learner(env: GridVectorEnv, cfg: CollectConfig) -> Learner:
    """The learner named by ``cfg.source``, built for every sub-env of ``env``."""
    if cfg.source == "ppo":
        return PPOLearner(env, cfg.ppo, cfg.steps, cfg.seed)
    if cfg.source == "qlearning":
        return QLearner(env, cfg.qlearning, cfg.steps, cfg.seed)
    if cfg.source == "noise":
        return NoiseLearner(env, cfg.noise, cfg.steps, cfg.seed)
    if cfg.source == "psrl":  # posterior sampling over what the family hides: goal, key and door, or permutation
        s = env.spec_
        sampler = KeyDoorSampler if s.reward == "key-door" else PermutationSampler if s.task_dim == 1 \
            else PosteriorSampler
        return sampler(env, cfg.psrl, cfg.steps, cfg.seed)
    raise ValueError(f"unknown source {cfg.source!r}; choose one of {SOURCES}")


__all__ = ["SOURCES", "make_learner"]
