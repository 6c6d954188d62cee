"""A flow-matching policy for flat state observations (MLP velocity field)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
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

    - observation: a flat vector, or a Dict with ``state`` (and optionally ``task_id``,
      embedded, for multi-task suites); the state is normalised with ``obs_mean`` /
      ``obs_std`` and the flow runs in actions normalised by ``action_mean`` /
      ``action_std`` (buffers, set from the demonstrations by SFT);
    - observation encoder: MLP → features (computed once per observation);
    - velocity MLP: its last hidden layer is the ``hidden`` that feeds the noise head;
    - noise head (Flow-Noise): MLP(hidden) → tanh → log σ² ∈ [log σ_min², log σ_max²];
    - value head: its own MLP on the normalised observation (PPO with unshared critic).
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
        num_tasks: int = 0,
        task_embed_dim: int = 16,
    ):
        super().__init__()
        self.obs_dim, self.horizon, self.action_dim = obs_dim, horizon, action_dim
        self.time_embed_dim, self.num_tasks = time_embed_dim, num_tasks
        self.std_min, self.std_max = float(noise_std_range[0]), float(noise_std_range[1])
        width = hidden_sizes[0]
        flat = horizon * action_dim
        in_dim = obs_dim + (task_embed_dim if num_tasks > 1 else 0)
        self.task_embedding = nn.Embedding(num_tasks, task_embed_dim) if num_tasks > 1 else None
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.obs_encoder = mlp([in_dim, width, width], out_act=nn.GELU)
        self.velocity_trunk = mlp([width + flat + time_embed_dim, *hidden_sizes], out_act=nn.GELU)
        self.velocity_out = nn.Linear(hidden_sizes[-1], flat)
        self.noise_head = mlp([hidden_sizes[-1], 128, flat])
        self.value_head = mlp([in_dim, *value_hidden_sizes, 1])

    @classmethod
    def from_spaces(cls, observation_space, action_space, **kwargs):
        """Build for a Box observation, or a Dict with ``state`` (+ ``task_id``)."""
        if isinstance(observation_space, gym.spaces.Dict):
            if "state" not in observation_space.spaces:
                raise ValueError(
                    f"StateFlowPolicy needs a 'state' entry in a Dict observation, got {observation_space}"
                )
            state = observation_space["state"]
            if "task_id" in observation_space.spaces:
                kwargs.setdefault("num_tasks", int(observation_space["task_id"].high.max()) + 1)
        elif isinstance(observation_space, gym.spaces.Box):
            state = observation_space
        else:
            raise TypeError(f"StateFlowPolicy needs a Box or Dict observation space, got {observation_space}")
        return cls(
            obs_dim=int(np.prod(state.shape)), horizon=action_space.shape[0], action_dim=action_space.shape[1], **kwargs
        )

    def normalized_input(self, obs) -> torch.Tensor:
        """The normalised state, with the task embedding appended for suites."""
        state = obs["state"] if isinstance(obs, dict) else obs
        x = (state.float().flatten(1) - self.obs_mean) / self.obs_std
        if self.task_embedding is not None:
            x = torch.cat([x, self.task_embedding(obs["task_id"].long().view(-1))], dim=-1)
        return x

    def unnormalize_actions(self, x, obs=None):
        return x * self.action_std + self.action_mean

    def normalize_actions(self, actions, obs=None):
        return (actions - self.action_mean) / self.action_std

    def encode(self, obs):
        x = self.normalized_input(obs)
        return {"input": x, "features": self.obs_encoder(x)}

    def velocity(self, context, x_t, t):
        temb = sinusoidal_embedding(t.to(x_t.dtype), self.time_embed_dim)
        hidden = self.velocity_trunk(torch.cat([context["features"], x_t.flatten(1), temb], dim=-1))
        v = self.velocity_out(hidden).view_as(x_t)
        return v, hidden

    def noise_std(self, hidden, std_range=None):
        raw = self.noise_head(hidden).view(-1, self.horizon, self.action_dim)
        lo, hi = std_range if std_range is not None else (self.std_min, self.std_max)
        return bounded_std(raw, lo, hi)

    def value(self, context):
        return self.value_head(context["input"]).squeeze(-1)

    def value_parameters(self):
        return self.value_head.parameters()

    def noise_parameters(self):
        return self.noise_head.parameters()
