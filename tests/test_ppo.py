"""Batched PPO source: numerics against hand values and stable-baselines3, task independence,
determinism, and that it learns Darkroom."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from adkit import envs
from adkit.config import PPOConfig
from adkit.data.loop import record
from adkit.data.sources.ppo import PPOLearner, gae

SMALL = PPOConfig(n_steps=20, batch_size=40, n_epochs=4)  # a cheap config for the structural tests


def learner(tasks, streams=4, cfg=SMALL, seed=0, **changes):
    env = envs.make("darkroom", tasks, streams=streams)
    return env, PPOLearner(env, dataclasses.replace(cfg, **changes), steps=0, seed=seed)


def test_gae_hand_example():
    # one stream, 3 steps, the episode ends after step 1; gamma 0.9, lambda 0.8
    rewards, values = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.5, 0.2, 0.1])
    dones, last = torch.tensor([0.0, 1.0, 0.0]), torch.tensor(0.3)
    adv, ret = gae(rewards, values, dones, last, gamma=0.9, lam=0.8)
    # t=2: 1 + .9*.3 - .1 = 1.17; t=1: done, 0 - .2 = -.2; t=0: (1 + .9*.2 - .5) + .9*.8*(-.2) = .536
    torch.testing.assert_close(adv, torch.tensor([0.536, -0.2, 1.17]))
    torch.testing.assert_close(ret, torch.tensor([1.036, 0.0, 1.27]))


def test_orthogonal_init_as_sb3():
    _, ppo = learner([(0, 0), (4, 4), (8, 8)])
    w1, b1, w2, _, w3, _, v1, _, v2, _, v3, b_v = ppo.params
    assert w1.shape == (3, 18, 64) and b1.shape == (3, 1, 64) and not b1.any() and not b_v.any()
    for w in (w1, v1):  # gain sqrt 2 on the hidden layers
        torch.testing.assert_close(w @ w.mT, 2 * torch.eye(18).expand(3, 18, 18), atol=1e-5, rtol=0)
    for w in (w2, v2):
        torch.testing.assert_close(w @ w.mT, 2 * torch.eye(64).expand(3, 64, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(w3.mT @ w3, 1e-4 * torch.eye(5).expand(3, 5, 5), atol=1e-8, rtol=0)  # 0.01
    torch.testing.assert_close(v3.mT @ v3, torch.ones(3, 1, 1), atol=1e-5, rtol=0)  # gain 1
    assert not torch.equal(w2[0], w2[1]) and not torch.equal(w2[0], v2[0])  # every net draws its own


def test_actions_in_range_and_shapes():
    env, ppo = learner([(0, 0), (8, 8)], streams=5)
    obs, _ = env.reset(seed=0)
    for t in range(3):
        actions = ppo.act(obs, t)
        assert actions.shape == (10,) and actions.dtype == np.int64
        assert actions.min() >= 0 and actions.max() < 5
        obs, *_ = env.step(actions)
    with pytest.raises(ValueError, match="ppo.encoding must be one of"):
        learner([(0, 0)], encoding="cell")


def test_deterministic_given_seed():
    runs = []
    for seed in (0, 0, 1):
        env, ppo = learner([(2, 3), (6, 1)], seed=seed)
        runs.append((record(env, ppo, 40, progress=False)["actions"], [p.detach().clone() for p in ppo.params]))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_tasks_do_not_interact():
    """Task 0 learns exactly the same next to a very different task 1 (own gradient, own clipping)."""
    out = []
    for other in [(4, 5), (0, 8)]:  # a goal next to the start, and a far corner
        env, ppo = learner([(4, 3), other], streams=4)
        actions = record(env, ppo, 60, progress=False)["actions"]  # (8, 60): 3 updates
        out.append((actions[:4], [p.detach().clone() for p in ppo.params]))
    (a0, p), (b0, q) = out
    assert np.array_equal(a0, b0) and all(torch.equal(x[0], y[0]) for x, y in zip(p, q))
    assert not torch.equal(p[0][1], q[0][1])  # while the other task did learn differently


def test_update_matches_stable_baselines3():
    """One rollout (with an episode end inside it) and its update, against SB3's PPO.train."""
    sb3 = pytest.importorskip("stable_baselines3")
    gym = pytest.importorskip("gymnasium")
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Stub(gym.Env):  # spaces only: SB3 trains on the buffer filled below
        observation_space = gym.spaces.Box(0, 8, shape=(2,), dtype=np.float32)
        action_space = gym.spaces.Discrete(5)

    streams, cfg = 3, dataclasses.replace(PPOConfig(), n_steps=25, batch_size=75, n_epochs=3, ent_coef=0.01,
                                          encoding="raw")
    env, ppo = learner([(3, 5)], streams=streams, cfg=cfg)
    model = sb3.PPO("MlpPolicy", DummyVecEnv([Stub] * streams), n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                    n_epochs=cfg.n_epochs, learning_rate=cfg.lr, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                    clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                    max_grad_norm=cfg.max_grad_norm, device="cpu")
    model.set_logger(configure(None, []))
    p = model.policy
    sb3_params = [p.mlp_extractor.policy_net[0], p.mlp_extractor.policy_net[2], p.action_net,
                  p.mlp_extractor.value_net[0], p.mlp_extractor.value_net[2], p.value_net]
    sb3_params = [t for layer in sb3_params for t in (layer.weight, layer.bias)]
    with torch.no_grad():
        for mine, theirs in zip(ppo.params, sb3_params):
            theirs.copy_(mine[0].mT.reshape(theirs.shape))  # (in, out) -> nn.Linear's (out, in)

    obs, _ = env.reset(seed=0)
    buf, starts = model.rollout_buffer, np.ones(streams, np.float32)
    for t in range(cfg.n_steps):
        actions = ppo.act(obs, t)
        reset_obs, rewards, terminated, truncated, _ = env.step(actions)
        dones = terminated | truncated
        buf.add(obs.astype(np.float32), actions[:, None], rewards, starts, ppo.values[t, 0], ppo.log_probs[t, 0])
        starts = dones.astype(np.float32)
        if t == cfg.n_steps - 1:
            with torch.no_grad():
                last = p.predict_values(torch.as_tensor(reset_obs, dtype=torch.float32))
            buf.compute_returns_and_advantage(last, dones)
        ppo.observe(obs, actions, rewards, reset_obs, dones, reset_obs, t)  # the last call updates
        obs = reset_obs
    model.train()
    for mine, theirs in zip(ppo.params, sb3_params):
        torch.testing.assert_close(mine[0].mT.reshape(theirs.shape), theirs, atol=2e-5, rtol=1e-4)


def test_learns_darkroom():
    goals = [(1, 6), (7, 2), (4, 8)]
    env, ppo = learner(goals, streams=16, cfg=dataclasses.replace(PPOConfig(), n_epochs=10))
    rewards = record(env, ppo, 400, progress=False)["rewards"]  # (48, 400)
    returns = rewards.reshape(len(rewards), 20, 20).sum(-1).mean(0)  # (20,) mean return per episode
    optimal = np.mean([envs.optimal_return("darkroom", g) for g in goals])
    assert returns[:3].mean() < 0.2 * optimal
    assert returns[-3:].mean() > 0.6 * optimal, returns
    assert not math.isnan(returns.sum())
