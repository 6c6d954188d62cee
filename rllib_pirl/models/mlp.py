"""A flow-matching policy for flat state observations (MLP velocity field)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rllib_pirl.flow import bounded_std
from rllib_pirl.models.base import FlowActionModel


def mlp(sizes: Sequence[int], act=nn.GELU, out_act=None) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
        elif out_act is not None:
            layers.append(out_act())
    return nn.Sequential(*layers)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """[sin(t·ω_i), cos(t·ω_i)] with ω_i log-spaced in [1, max_period] (t ∈ [0, 1])."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(max_period), half, device=t.device, dtype=t.dtype))
    angles = t[:, None] * freqs[None, :] * 2.0 * math.pi
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class StateFlowPolicy(FlowActionModel):
    """Velocity field v(x_t, t, obs) as an MLP over [obs features, x_t, time embedding].

    - observation encoder: MLP obs → features (computed once per observation);
    - velocity MLP: its last hidden layer is the ``hidden`` that feeds the noise head;
    - noise head (Flow-Noise): MLP(hidden) → tanh → log σ² ∈ [log σ_min², log σ_max²];
    - value head: its own MLP on the observation (PPO with unshared critic).
    """

    def __init__(
        self,
        obs_dim: int,
        horizon: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256, 256),
        time_embed_dim: int = 32,
        value_hidden_sizes: Sequence[int] = (256, 256),
        noise_std_range: Sequence[float] = (0.08, 0.16),
    ):
        super().__init__()
        self.obs_dim, self.horizon, self.action_dim = obs_dim, horizon, action_dim
        self.time_embed_dim = time_embed_dim
        self.std_min, self.std_max = float(noise_std_range[0]), float(noise_std_range[1])
        width = hidden_sizes[0]
        flat = horizon * action_dim
        self.obs_encoder = mlp([obs_dim, width, width], out_act=nn.GELU)
        self.velocity_trunk = mlp([width + flat + time_embed_dim, *hidden_sizes], out_act=nn.GELU)
        self.velocity_out = nn.Linear(hidden_sizes[-1], flat)
        self.noise_head = mlp([hidden_sizes[-1], 128, flat])
        self.value_head = mlp([obs_dim, *value_hidden_sizes, 1])

    def encode(self, obs):
        obs = obs.float()
        return {"obs": obs, "features": self.obs_encoder(obs)}

    def velocity(self, context, x_t, t):
        temb = sinusoidal_embedding(t.to(x_t.dtype), self.time_embed_dim)
        hidden = self.velocity_trunk(torch.cat([context["features"], x_t.flatten(1), temb], dim=-1))
        v = self.velocity_out(hidden).view_as(x_t)
        return v, hidden

    def noise_std(self, hidden):
        raw = self.noise_head(hidden).view(-1, self.horizon, self.action_dim)
        return bounded_std(raw, self.std_min, self.std_max)

    def value(self, context):
        return self.value_head(context["obs"]).squeeze(-1)

    def value_parameters(self):
        return self.value_head.parameters()
