"""PPO with one learner per task, all tasks batched in torch.

The published AD/DICP data comes from stable-baselines3 PPO run once per task on
a ``DummyVecEnv`` of 100 streams. :class:`PPOLearner` keeps those semantics —
separate policy and value MLPs with two tanh hidden layers, SB3's orthogonal
init, Adam(eps=1e-5), GAE, clipped surrogate + value loss + entropy bonus,
advantages normalised per minibatch, gradient-norm clipping, ``n_epochs``
shuffled passes over each rollout of ``n_steps`` x streams transitions in
minibatches of ``batch_size`` — but gives every parameter a leading task
dimension, so all tasks act and update together in batched matmuls. A test
checks one update against SB3's ``PPO.train`` on the same data.

Tasks never mix: each task's loss reads only its own parameters and data, so
the summed loss gives every task its own gradient; clipping uses a per-task
norm; Adam is elementwise (its step count is shared, and equal for all tasks).
Sub-env ``i`` of the env runs task ``i // env.streams``.

Cost: every minibatch step runs the full math of all tasks (81 tasks x 50
samples through two 64-wide tanh layers per net, Adam over ~0.9 M parameters),
about 6 ms on 2 cores; ``n_epochs`` sets the number of steps, so it sets the cost.
The step is memory-bound, so the backward pass is written by hand (no autograd
graph) and both nets' hidden layers run as one batched matmul.
``benchmarks/bench_collect.py`` measures it against the published SB3 way.

Two choices:

* Episode ends are terminal: the value after a ``done`` (here: truncation at
  the horizon) is not bootstrapped, as in the published data, whose Darkroom
  env reports a plain ``done=True`` that SB3 does not treat as a time-out.
* ``PPOConfig.encoding="rowcol"`` (default) feeds a one-hot of the row and one of the
  column (``2 * size`` inputs) instead of SB3's raw ``(row, col)`` floats
  (``encoding="raw"``, the ``paper`` profile's). Measured at the DICP settings on 9 Darkroom goals x 100
  streams (optimal 16.1), mean return of episode 10: rowcol 13.4, raw 10.4
  (both ~16.0 by episode 50); a one-hot of the cell gave 13.2 with 1.7x the
  parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from adkit.config import PPOConfig
from adkit.envs import GridVectorEnv

ENCODINGS = ("rowcol", "raw")


def orthogonal(n: int, fan_in: int, fan_out: int, gain: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` independent (semi-)orthogonal ``(fan_in, fan_out)`` matrices times ``gain``, drawn
    as ``torch.nn.init.orthogonal_`` (SB3's init) draws one (transposed: ``x @ W``)."""
    a = torch.randn(n, max(fan_in, fan_out), min(fan_in, fan_out), generator=gen)
    q, r = torch.linalg.qr(a)  # q: (n, max, min) with orthonormal columns
    q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)  # uniform (Haar) over rotations
    return gain * (q if fan_in >= fan_out else q.mT).contiguous()  # (n, fan_in, fan_out)


class ActorCritic:
    """A policy and a value net for each of ``n`` tasks (two tanh hidden layers each, as SB3's
    ``MlpPolicy``), with a hand-written backward pass.

    The hidden layers of all ``2n`` nets are stacked on one leading dim (policy nets first),
    so one batched matmul runs both nets; the heads (``n_actions`` logits, one value) are
    separate. Parameters and gradients are views of the 1-D tensors ``params`` and ``grads``
    (:meth:`numel` elements), so that one optimizer step and one clipping pass cover all
    nets. Weights are ``(nets, in, out)`` (``x @ W``), biases ``(nets, 1, out)``. SB3's init:
    orthogonal, gain sqrt(2) on the hidden layers, 0.01 on the policy head, 1 on the value
    head, biases zero.
    """

    def __init__(self, params: torch.Tensor, grads: torch.Tensor, n: int, n_in: int, hidden: int,
                 n_actions: int, gen: torch.Generator):
        self.n = n
        shapes = self.shapes(n, n_in, hidden, n_actions)
        self.p, self.g = views(params, shapes), views(grads, shapes)
        for i, (head, gain) in enumerate((("w_pi", 0.01), ("w_vf", 1.0))):  # SB3's order: policy, then value
            nets = slice(i * n, (i + 1) * n)
            self.p["w1"][nets] = orthogonal(n, n_in, hidden, math.sqrt(2), gen)
            self.p["w2"][nets] = orthogonal(n, hidden, hidden, math.sqrt(2), gen)
            self.p[head].copy_(orthogonal(n, hidden, self.p[head].shape[-1], gain, gen))

    @staticmethod
    def shapes(n: int, n_in: int, hidden: int, n_actions: int) -> dict[str, tuple[int, ...]]:
        return {"w1": (2 * n, n_in, hidden), "b1": (2 * n, 1, hidden), "w2": (2 * n, hidden, hidden),
                "b2": (2 * n, 1, hidden), "w_pi": (n, hidden, n_actions), "b_pi": (n, 1, n_actions),
                "w_vf": (n, hidden, 1), "b_vf": (n, 1, 1)}

    @staticmethod
    def numel(*args: int) -> int:
        """Elements of :meth:`shapes` ``(n, n_in, hidden, n_actions)`` in all."""
        return sum(math.prod(x) for x in ActorCritic.shapes(*args).values())

    @property
    def params(self) -> list[torch.Tensor]:
        """Per-task views in SB3's order: the policy's ``W1, b1, W2, b2, W_out, b_out``, then the value net's."""
        p, n = self.p, self.n
        return [p["w1"][:n], p["b1"][:n], p["w2"][:n], p["b2"][:n], p["w_pi"], p["b_pi"],
                p["w1"][n:], p["b1"][n:], p["w2"][n:], p["b2"][n:], p["w_vf"], p["b_vf"]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Inputs ``x (n, B, in)`` -> logits ``(n, B, A)``, values ``(n, B)`` and the activations
        :meth:`backward` needs."""
        p, n = self.p, self.n
        x2 = x.repeat(2, 1, 1)  # (2n, B, in): the same input for the policy and the value nets
        h1 = torch.baddbmm(p["b1"], x2, p["w1"]).tanh_()  # (2n, B, H)
        h2 = torch.baddbmm(p["b2"], h1, p["w2"]).tanh_()  # (2n, B, H)
        logits = torch.baddbmm(p["b_pi"], h2[:n], p["w_pi"])  # (n, B, A)
        values = torch.baddbmm(p["b_vf"], h2[n:], p["w_vf"]).squeeze(-1)  # (n, B, 1) -> (n, B)
        return logits, values, (x2, h1, h2)

    def backward(self, d_logits: torch.Tensor, d_values: torch.Tensor, acts: tuple[torch.Tensor, ...]) -> None:
        """Write every gradient into ``self.g`` given the loss's gradient w.r.t. the logits
        ``(n, B, A)`` and the values ``(n, B)``; ``acts`` from :meth:`forward`."""
        (x2, h1, h2), p, g, n = acts, self.p, self.g, self.n
        d_h2 = torch.empty_like(h2)  # (2n, B, H)
        for head, d, nets in (("pi", d_logits, slice(0, n)), ("vf", d_values[..., None], slice(n, 2 * n))):
            torch.bmm(h2[nets].mT, d, out=g["w_" + head])  # (n, H, out)
            torch.sum(d, 1, keepdim=True, out=g["b_" + head])  # (n, 1, out)
            torch.bmm(d, p["w_" + head].mT, out=d_h2[nets])  # (n, B, H)
        d = torch.ops.aten.tanh_backward(d_h2, h2)  # through tanh: d * (1 - h^2)
        torch.bmm(h1.mT, d, out=g["w2"])
        torch.sum(d, 1, keepdim=True, out=g["b2"])
        d = torch.ops.aten.tanh_backward(d @ p["w2"].mT, h1)  # (2n, B, H)
        torch.bmm(x2.mT, d, out=g["w1"])
        torch.sum(d, 1, keepdim=True, out=g["b1"])


def views(flat: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Consecutive views of ``flat`` with the given shapes (each contiguous)."""
    out, i = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = flat[i:i + n].view(shape)
        i += n
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and value targets, as SB3's rollout buffer computes them.

    ``rewards, values, dones: (n_steps, ...)``, ``dones[t]`` true when the episode
    ended at step ``t`` (nothing is bootstrapped across it); ``last_values: (...)``
    is the value of the observation after the last step. Returns ``(advantages,
    returns)``, both ``(n_steps, ...)``, with ``returns = advantages + values``.
    """
    advantages = torch.zeros_like(rewards)
    running, next_values = torch.zeros_like(last_values), last_values
    for t in reversed(range(len(rewards))):
        keep = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * next_values * keep - values[t]
        running = delta + gamma * lam * keep * running
        advantages[t], next_values = running, values[t]
    return advantages, advantages + values


class PPOLearner:
    """PPO on every task of ``env`` at once: a policy net and a value net per task.

    The update computes the loss's gradients by hand (the clipped surrogate's, the value
    loss's and the entropy bonus's, then :meth:`ActorCritic.backward`); one fused Adam step
    then updates every parameter. A test checks the result against SB3's autograd update. ``steps`` is part
    of the learner signature; PPO's schedule does not use it.
    """

    def __init__(self, env: GridVectorEnv, cfg: PPOConfig, steps: int, seed: int = 0):
        if cfg.encoding not in ENCODINGS:
            raise ValueError(f"ppo.encoding must be one of {ENCODINGS}, got {cfg.encoding!r}")
        s = env.spec_
        self.cfg, self.size, self.encoding = cfg, s.size, cfg.encoding
        self.n_tasks, self.streams = env.num_envs // env.streams, env.streams
        self.gen = torch.Generator().manual_seed(seed)
        sizes = (self.n_tasks, 2 * s.size if cfg.encoding == "rowcol" else 2, cfg.hidden, s.n_actions)
        self.flat = torch.zeros(ActorCritic.numel(*sizes))  # every parameter of every task
        self.flat.grad = torch.zeros_like(self.flat)  # read by Adam, written by the nets' backward
        self.nets = ActorCritic(self.flat, self.flat.grad, *sizes, self.gen)
        self.opt = torch.optim.Adam([self.flat], lr=cfg.lr, eps=1e-5, fused=True)  # fused: ~4x faster on CPU
        shape = (cfg.n_steps, self.n_tasks, self.streams)  # rollout buffer, time-major
        self.obs = torch.zeros(shape + (2,), dtype=torch.long)
        self.actions = torch.zeros(shape, dtype=torch.long)
        self.log_probs, self.values, self.rewards, self.dones = (torch.zeros(shape) for _ in range(4))
        self.k = 0  # steps stored in the current rollout

    @property
    def params(self) -> list[torch.Tensor]:
        """Per-task views in SB3's order: the policy's ``W1, b1, W2, b2, W_out, b_out``, then the value net's."""
        return self.nets.params

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Positions ``(..., 2)`` long -> network input ``(..., 2 * size)`` (rowcol) or ``(..., 2)`` (raw)."""
        if self.encoding == "raw":
            return obs.float()
        return F.one_hot(obs, self.size).flatten(-2).float()  # (..., 2, size) -> (..., 2 * size)

    def _split(self, x: np.ndarray) -> torch.Tensor:
        """A per-sub-env array ``(n_envs, ...)`` as a tensor ``(n_tasks, streams, ...)``."""
        x = torch.from_numpy(np.asarray(x))
        return x.reshape(self.n_tasks, self.streams, *x.shape[1:])  # (n_envs, ...) -> (T, S, ...)

    @staticmethod
    def log_softmax(logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the last dim of ``(T, B, A)`` logits (computed along a middle
        dim: torch's CPU kernel is ~4x slower along a last dim as short as 5)."""
        return logits.mT.log_softmax(-2).mT

    @torch.no_grad()
    def act(self, obs: np.ndarray, t: int) -> np.ndarray:
        """Sample an action ``(n_envs,)`` for positions ``obs (n_envs, 2)``; store log-prob and value."""
        obs = self._split(obs).long()  # (T, S, 2)
        logits, values, _ = self.nets.forward(self.encode(obs))  # (T, S, A), (T, S)
        log_p = self.log_softmax(logits)
        actions = torch.multinomial(log_p.exp().flatten(0, 1), 1, generator=self.gen)  # (T*S, 1)
        actions = actions.view(self.n_tasks, self.streams)  # (T*S, 1) -> (T, S)
        self.obs[self.k], self.actions[self.k] = obs, actions
        self.log_probs[self.k] = log_p.gather(-1, actions[..., None]).squeeze(-1)
        self.values[self.k] = values
        return actions.flatten().numpy()

    def observe(self, obs, actions, rewards, next_obs, dones, reset_obs, t) -> None:
        """Store the step's rewards and dones; every ``n_steps`` steps, update all tasks."""
        self.rewards[self.k], self.dones[self.k] = self._split(rewards).float(), self._split(dones).float()
        self.k += 1
        if self.k == self.cfg.n_steps:
            self.update(self._split(reset_obs).long())
            self.k = 0

    def policy_gradient(self, log_p, actions, old_log_probs, advantages) -> torch.Tensor:
        """Gradient w.r.t. the logits ``(T, B, A)`` of SB3's policy loss (the clipped surrogate, minus
        ``ent_coef`` x the entropy, minibatch means); ``log_p (T, B, A)``, the rest ``(T, B)``."""
        c, n = self.cfg, actions.shape[1]
        if n > 1:  # SB3 skips normalising a minibatch of one
            advantages = (advantages - advantages.mean(1, keepdim=True)) / (advantages.std(1, keepdim=True) + 1e-8)
        probs = log_p.exp()  # (T, B, A)
        ratio = (log_p.gather(-1, actions[..., None]).squeeze(-1) - old_log_probs).exp()  # (T, B)
        # min(A r, A clip(r)) is the flat clipped term where r left the clip range in A's direction
        unclipped = torch.where(advantages > 0, ratio <= 1 + c.clip_range, ratio >= 1 - c.clip_range)
        d_log_prob = -advantages * ratio * unclipped / n  # (T, B)
        d_logits = (F.one_hot(actions, probs.shape[-1]) - probs) * d_log_prob[..., None]  # through log_softmax
        if c.ent_coef:  # d(sum p log p)/dz = p (log p - sum p log p)
            d_logits += c.ent_coef / n * probs * (log_p - (probs * log_p).sum(-1, keepdim=True))
        return d_logits

    def clip_gradients(self) -> None:
        """``torch.nn.utils.clip_grad_norm_`` applied to each task's gradient alone."""
        T = self.n_tasks
        per_task = [g.view(-1, T, g[0].numel()) for g in self.nets.g.values()]  # (1 or 2 nets, T, numel)
        norms = torch.cat([torch.linalg.vector_norm(g.flatten(0, 1), dim=1).view(-1, T) for g in per_task])
        scale = (self.cfg.max_grad_norm / (norms.norm(dim=0) + 1e-6)).clamp(max=1.0)[:, None]  # (T, 1)
        for g in per_task:
            g.mul_(scale)

    @torch.no_grad()
    def update(self, last_obs: torch.Tensor) -> None:
        """``n_epochs`` passes of minibatch PPO over the stored rollout; ``last_obs (T, S, 2)`` follows it."""
        c, n_tasks = self.cfg, self.n_tasks
        last_values = self.nets.forward(self.encode(last_obs))[1]  # (T, S)
        advantages, returns = gae(self.rewards, self.values, self.dones, last_values, c.gamma, c.gae_lambda)
        rollout = [x.transpose(0, 1).flatten(1, 2)  # (n_steps, T, S, ...) -> (T, n_steps * S, ...)
                   for x in (self.encode(self.obs), self.actions, self.log_probs, advantages, returns)]
        n = rollout[0].shape[1]
        rows = torch.arange(n_tasks)[:, None]  # (T, 1)
        for _ in range(c.n_epochs):
            order = torch.rand(n_tasks, n, generator=self.gen).argsort(1)  # (T, n): a shuffle per task
            shuffled = [r[rows, order] for r in rollout]
            for start in range(0, n, c.batch_size):
                x, actions, old_log_probs, adv, ret = (r[:, start:start + c.batch_size] for r in shuffled)
                logits, values, acts = self.nets.forward(x)  # (T, B, A), (T, B)
                d_logits = self.policy_gradient(self.log_softmax(logits), actions, old_log_probs, adv)
                d_values = -2 * c.vf_coef / values.shape[1] * (ret - values)  # of vf_coef x the MSE
                self.nets.backward(d_logits, d_values, acts)
                self.clip_gradients()
                self.opt.step()
