"""One denoising step of a flow policy, and the Gaussian it defines.

Conventions (π0 / openpi): time runs from t = 1 (pure noise) to t = 0 (action).
Training pairs are x_t = t·ε + (1 − t)·a and the network predicts the velocity
v(x_t, t) ≈ ε − a. A step goes from t to t − dt.

Every function takes ``t`` as a float or a tensor that broadcasts against the
leading (batch) dimension of ``x``.
"""

from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _like(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor shaped to broadcast over ``x`` (batch dim first)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


def time_grid(num_steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The K + 1 times t_k = 1 − k/K, k = 0..K (from noise to action)."""
    if num_steps < 1:
        raise ValueError(f"num_steps (K) must be >= 1, got {num_steps}")
    return 1.0 - torch.arange(num_steps + 1, device=device, dtype=dtype) / num_steps


def ode_step(x: torch.Tensor, v: torch.Tensor, t, dt) -> torch.Tensor:
    """Deterministic Euler step of the probability-flow ODE: x_{t−dt} = x_t − dt·v."""
    return x - (_like(dt, x) if torch.is_tensor(dt) else dt) * v


def sde_step(x: torch.Tensor, v: torch.Tensor, t, dt, noise_level: float):
    """Flow-SDE transition with the marginals of the ODE; returns ``(mean, std)``.

    σ_t  = a·sqrt(t / (1 − t)), with t replaced by 1 − dt at the pole t = 1,
    mean = x − dt·[v + σ_t²/(2t)·(x + (1 − t)·v)],
    std  = sqrt(dt)·σ_t,

    where a is ``noise_level`` and −(x + (1 − t)·v)/t is the score ∇log p_t(x)
    recovered from the velocity. With a = 0 this is :func:`ode_step`.
    ``t`` and ``noise_level`` may be Python floats (a rollout: one t and a for the batch;
    cheapest) or tensors of per-row values (the learner: rows from different rollouts).
    ``dt`` is a float.
    """
    t_sigma = torch.clamp(t, max=1.0 - dt) if torch.is_tensor(t) else min(t, 1.0 - dt)  # the pole
    sigma2 = noise_level**2 * t_sigma / (1.0 - t_sigma)
    c = sigma2 / (2.0 * t)
    # mean = x·(1 − dt·c) − v·dt·(1 + c·(1 − t)), the formula above regrouped.
    coef_x, coef_v, std = 1.0 - dt * c, dt * (1.0 + c * (1.0 - t)), (dt * sigma2) ** 0.5
    if torch.is_tensor(std):
        coef_x, coef_v, std = (_like(z, x) for z in (coef_x, coef_v, std))
    else:
        std = torch.tensor(std, dtype=x.dtype, device=x.device)
    return x * coef_x - v * coef_v, std.expand_as(x)


def flow_noise_step(x: torch.Tensor, v: torch.Tensor, t, dt, std: torch.Tensor):
    """Flow-Noise transition; returns ``(mean, std)``: mean = x − dt·v (the ODE step),
    std = σ_θ from the learned noise head."""
    return ode_step(x, v, t, dt), std.expand_as(x)


def bounded_std(raw: torch.Tensor, std_min, std_max) -> torch.Tensor:
    """Noise-head output → std in [std_min, std_max]:
    log σ² = log σ_min² + (tanh(raw) + 1)/2 · (log σ_max² − log σ_min²), σ = exp(½·log σ²).
    The bounds are floats or tensors of per-row bounds (B,)."""
    raw = raw.float()
    lo, hi = (2.0 * torch.log(_like(b, raw)) for b in (std_min, std_max))
    logvar = lo + 0.5 * (torch.tanh(raw) + 1.0) * (hi - lo)
    return torch.exp(0.5 * logvar)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std²) = −(x − mean)²/(2·std²) − log std − ½·log 2π."""
    return -((x - mean) ** 2) / (2.0 * std**2) - torch.log(std) - LOG_SQRT_2PI


def gaussian_kl(mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean_p, std_p²) ‖ N(mean_q, std_q²))
    = log(std_q / std_p) + (std_p² + (mean_p − mean_q)²) / (2·std_q²) − ½."""
    return torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2.0 * std_q**2) - 0.5


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy of N(·, std²): ½·log(2πe·std²)."""
    return 0.5 + LOG_SQRT_2PI + torch.log(std)
