"""The small interface every action model (state MLP, π0, π0.5) implements."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class FlowActionModel(nn.Module, abc.ABC):
    """A flow-matching action model with the RL heads of πRL.

    Shapes: actions and latents are (B, horizon, action_dim); t is (B,).
    ``horizon`` and ``action_dim`` may exceed what the env uses (π0 pads to 32 dims
    and predicts 50 steps): the RLModule crops to the env's chunk and dims.
    """

    horizon: int
    action_dim: int

    @abc.abstractmethod
    def encode(self, obs: Any) -> Any:
        """Everything the denoising steps reuse for one observation (e.g. features or
        a prefix KV cache). Runs once per observation, whatever K is."""

    @abc.abstractmethod
    def velocity(self, context: Any, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, hidden)``: velocity v(x_t, t | obs) ≈ ε − a and the hidden state that
        feeds the noise head."""

    @abc.abstractmethod
    def value(self, context: Any) -> torch.Tensor:
        """State value V(obs), shape (B,)."""

    @abc.abstractmethod
    def noise_std(self, hidden: torch.Tensor) -> torch.Tensor:
        """Flow-Noise's learned std σ_θ(hidden), broadcastable to (B, horizon, action_dim)."""

    @abc.abstractmethod
    def value_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of the value head (trained with their own learning rate)."""

    def unnormalize_actions(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised latents (the normalised action space the flow lives in) → env actions.
        Identity unless the model carries action statistics."""
        return x

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`unnormalize_actions` (for training on demonstrations)."""
        return actions

    def flow_matching_loss(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        """Conditional flow-matching loss E‖v(x_t, t) − (ε − a)‖², x_t = t·ε + (1 − t)·a,
        t ~ U(0, 1) (behaviour cloning / SFT); ``actions`` are env actions, normalised here."""
        actions = self.normalize_actions(actions)
        context = self.encode(obs)
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device, dtype=actions.dtype)
        tb = t.view(-1, *([1] * (actions.dim() - 1)))
        x_t = tb * noise + (1.0 - tb) * actions
        v, _ = self.velocity(context, x_t, t)
        return ((v - (noise - actions)) ** 2).mean()
