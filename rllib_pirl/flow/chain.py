"""Denoising chains x_0 → x_1 → … → x_K and their log-likelihoods.

Flow-SDE and Flow-Noise differ in one small piece, an :class:`Exploration`:
which denoising steps are stochastic, and the Gaussian N(mean, std²) of such a
step. Everything else — sampling the chain, recording the latents, recomputing
the log-prob in the learner — is shared code below.

A *velocity function* is ``velocity_fn(x, t) -> (v, hidden)`` with ``x`` of
shape (B, H, D) and ``t`` of shape (B,); ``hidden`` feeds Flow-Noise's noise head.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rllib_pirl.flow.steps import (
    flow_noise_step,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    ode_step,
    sde_step,
    time_grid,
)

VelocityFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LOGPROB_REDUCTIONS = ("sum", "per_element")


class Exploration(abc.ABC):
    """Which denoising steps are stochastic, and the Gaussian of one such step."""

    #: whether the chain's log-prob includes log N(x_0; 0, I) (constant in θ).
    includes_prior: bool = False

    @abc.abstractmethod
    def stochastic_steps(self, num_steps: int, generator=None) -> torch.Tensor:
        """Indices k of the stochastic transitions x_k → x_{k+1} of one rollout call."""

    @abc.abstractmethod
    def transition(self, x, v, hidden, t, dt) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of x_{k+1} given x_k, its velocity and hidden state."""


class SDEExploration(Exploration):
    """Flow-SDE's hybrid sampling: ONE step k* ~ U{0..K−1} per rollout call (shared
    by the batch) is an SDE step (:func:`sde_step`), all the others are ODE steps;
    with ``all_steps`` every step is an SDE step (the variant the paper compares with:
    K log-densities per chain, K× the learner's velocity evaluations)."""

    def __init__(self, noise_level: float, all_steps: bool = False):
        self.noise_level, self.all_steps = noise_level, all_steps

    def stochastic_steps(self, num_steps, generator=None):
        if self.all_steps:
            return torch.arange(num_steps)
        return torch.randint(num_steps, (1,), generator=generator)

    def transition(self, x, v, hidden, t, dt):
        return sde_step(x, v, t, dt, self.noise_level)


class LearnedNoiseExploration(Exploration):
    """Flow-Noise: every step is stochastic with mean = ODE step and
    std = σ_θ(hidden) from the noise head (:func:`flow_noise_step`); the chain's
    likelihood starts with log N(x_0; 0, I)."""

    includes_prior = True

    def __init__(self, noise_std_fn: Callable[[torch.Tensor], torch.Tensor]):
        self.noise_std_fn = noise_std_fn

    def stochastic_steps(self, num_steps, generator=None):
        return torch.arange(num_steps)

    def transition(self, x, v, hidden, t, dt):
        return flow_noise_step(x, v, t, dt, self.noise_std_fn(hidden))


@dataclass
class Chain:
    latents: torch.Tensor  # (B, K+1, H, D): x_0 … x_K, x_K is the action chunk
    steps: torch.Tensor  # (B, S) long: the stochastic transitions k (x_k → x_{k+1})
    log_prob: torch.Tensor  # (B, H, D) fp32: Σ over stochastic steps (+ prior)
    # Set by chain_log_prob (the learner) only:
    entropy: torch.Tensor | None = None  # (B, H, D) fp32: mean step entropy ½·log(2πe·std²)
    std: torch.Tensor | None = None  # (B,) fp32: mean std of the stochastic steps
    kl: torch.Tensor | None = None  # (B, H, D) fp32: Σ over stochastic steps of KL(this ‖ reference)

    @property
    def actions(self) -> torch.Tensor:
        return self.latents[:, -1]


def _prior_log_prob(x0):
    x0 = x0.float()
    return gaussian_log_prob(x0, torch.zeros_like(x0), torch.ones_like(x0))


def sample_chain(
    velocity_fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int,
    exploration: Exploration | None = None,
    generator: torch.Generator | None = None,
) -> Chain:
    """Run the K denoising steps from ``x0`` (B, H, D).

    Without ``exploration`` every step is the deterministic ODE step. With it, the
    steps it names are drawn from its Gaussian and their log-densities summed
    (elementwise over H, D), with log N(x_0; 0, I) when it ``includes_prior``.
    Only what a rollout needs is computed (no entropy: see :func:`chain_log_prob`).
    """
    batch = x0.shape[0]
    grid = time_grid(num_steps, device=x0.device, dtype=x0.dtype)
    dt = 1.0 / num_steps
    stochastic = (
        exploration.stochastic_steps(num_steps, generator)
        if exploration is not None
        else torch.zeros(0, dtype=torch.long)
    )
    is_stochastic = set(stochastic.tolist())
    log_prob = torch.zeros(x0.shape, dtype=torch.float32, device=x0.device)
    if exploration is not None and exploration.includes_prior:
        log_prob = log_prob + _prior_log_prob(x0)

    latents = [x0]
    x = x0
    for k in range(num_steps):
        v, hidden = velocity_fn(x, grid[k].expand(batch))
        if k in is_stochastic:
            mean, std = exploration.transition(x, v, hidden, 1.0 - k * dt, dt)
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu")
            x = mean + std * noise.to(mean.device)
            log_prob = log_prob + gaussian_log_prob(x.float(), mean.float(), std.float())
        else:
            x = ode_step(x, v, None, dt)
        latents.append(x)
    return Chain(
        latents=torch.stack(latents, dim=1),
        steps=stochastic.to(x0.device).expand(batch, -1).clone(),
        log_prob=log_prob,
    )


def chain_log_prob(
    velocity_fn: VelocityFn,
    latents: torch.Tensor,
    steps: torch.Tensor,
    exploration: Exploration,
    reference: tuple[VelocityFn, Exploration] | None = None,
) -> Chain:
    """Recompute the log-prob of stored chains at the current weights.

    ``latents`` (B, K+1, H, D) and ``steps`` (B, S) come from :func:`sample_chain`
    (rows may come from different rollout calls, so k* varies per row). Only the S
    stochastic transitions are evaluated: S = 1 for Flow-SDE, S = K for Flow-Noise.

    With a ``reference`` policy (its velocity function and exploration, evaluated without
    gradient) the chain also gets ``kl`` = Σ_k KL(p_θ(x_{k+1} | x_k) ‖ p_ref(x_{k+1} | x_k))
    over the same stochastic transitions, elementwise: the per-step terms of the chain rule
    KL(p_θ(chain) ‖ p_ref(chain)) = Σ_k E[KL of step k] (the prior N(0, I) is shared).
    """
    batch, num_steps = latents.shape[0], latents.shape[1] - 1
    dt = 1.0 / num_steps
    grid = time_grid(num_steps, device=latents.device, dtype=latents.dtype)
    rows = torch.arange(batch, device=latents.device)
    steps = steps.long().to(latents.device)
    zeros = torch.zeros(latents[:, 0].shape, dtype=torch.float32, device=latents.device)
    log_prob, entropy = zeros.clone(), zeros.clone()
    kl = zeros.clone() if reference is not None else None
    std_sum = torch.zeros(batch, dtype=torch.float32, device=latents.device)
    if exploration.includes_prior:
        log_prob = log_prob + _prior_log_prob(latents[:, 0])
    for j in range(steps.shape[1]):
        k = steps[:, j]
        x, x_next, t = latents[rows, k], latents[rows, k + 1], grid[k]
        v, hidden = velocity_fn(x, t)
        mean, std = exploration.transition(x, v, hidden, t, dt)
        std = std.float()
        log_prob = log_prob + gaussian_log_prob(x_next.float(), mean.float(), std)
        entropy = entropy + gaussian_entropy(std)
        std_sum = std_sum + std.flatten(1).mean(1)
        if reference is not None:
            with torch.no_grad():
                ref_v, ref_hidden = reference[0](x, t)
                ref_mean, ref_std = reference[1].transition(x, ref_v, ref_hidden, t, dt)
            kl = kl + gaussian_kl(mean.float(), std, ref_mean.float(), ref_std.float())
    n = max(steps.shape[1], 1)
    return Chain(latents, steps, log_prob, entropy / n, std_sum / n, kl)


def reduce_log_prob(log_prob: torch.Tensor, action_chunk: int, action_dim: int, reduction: str) -> torch.Tensor:
    """(B, H, D) elementwise log-probs → (B, N) log-probs of the PPO ratios.

    Only the first ``action_chunk`` steps and the first ``action_dim`` (real) action
    dims enter. ``"sum"``: one ratio per chunk, N = 1 (Σ over chunk × dims);
    ``"per_element"``: one ratio per action element, N = chunk·dims.
    """
    real = log_prob[:, :action_chunk, :action_dim].flatten(1)
    if reduction == "sum":
        return real.sum(dim=1, keepdim=True)
    if reduction == "per_element":
        return real
    raise ValueError(f"Unknown logprob_reduction {reduction!r}; choose one of {LOGPROB_REDUCTIONS}.")
