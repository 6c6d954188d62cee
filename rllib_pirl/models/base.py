"""The small interface every action model (state MLP, π0, π0.5) implements."""

from __future__ import annotations

import abc
import dataclasses
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class FlowActionModel(nn.Module, abc.ABC):
    """A flow-matching action model with the RL heads of πRL.

    Shapes: actions and latents are (B, horizon, action_dim); t is (B,).
    ``horizon`` and ``action_dim`` may exceed what the env uses (π0 pads to 32 dims
    and predicts 50 steps): the RLModule crops to the env's chunk and dims.

    ``init_kwargs`` (recorded at construction, defaults included) are the constructor's
    arguments: a model checkpoint rebuilds the model from them. The RL heads are the
    parameters of :meth:`value_parameters` and :meth:`noise_parameters`: RL trains them,
    SFT never does.
    """

    horizon: int
    action_dim: int

    def __new__(cls, *args, **kwargs):
        # Record the constructor's arguments (defaults included) as ``init_kwargs``: what a
        # checkpoint needs to rebuild the model, so that no argument can drop out of it.
        # Positional arguments are recorded by name, ``**kwargs`` flattened.
        self = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:  # copy / unpickling: the instance's own init_kwargs come back with its state
            return self
        bound.apply_defaults()
        recorded = {}
        for name, value in list(bound.arguments.items())[1:]:  # without self
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{cls.__name__}: pass *{name} arguments by keyword (checkpoints store keywords).")
            else:
                recorded[name] = value
        object.__setattr__(self, "init_kwargs", {k: _plain(v) for k, v in recorded.items()})
        return self

    @abc.abstractmethod
    def encode(self, obs: Any) -> Any:
        """Everything the denoising steps reuse for one observation (e.g. features or
        a prefix KV cache). Runs once per observation, whatever K is."""

    #: True when :meth:`encode` has no trainable parameters (π0's frozen VLM): its result for
    #: an observation is then the same in every epoch of an update, and the learner computes it
    #: once per train batch (``prefix_cache``).
    frozen_encoding: bool = False

    @abc.abstractmethod
    def velocity(self, context: Any, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, hidden)``: velocity v(x_t, t | obs) ≈ ε − a and the hidden state that
        feeds the noise head."""

    @abc.abstractmethod
    def value(self, context: Any) -> torch.Tensor:
        """State value V(obs), shape (B,)."""

    @abc.abstractmethod
    def noise_std(self, hidden: torch.Tensor, std_range=None) -> torch.Tensor:
        """Flow-Noise's learned std σ_θ(hidden), broadcastable to (B, horizon, action_dim), in
        ``std_range`` = (min, max) (floats, or per-row tensors (B,)); the model's own bounds
        when None."""

    @abc.abstractmethod
    def value_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of the value head (trained with their own learning rate)."""

    @abc.abstractmethod
    def noise_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of Flow-Noise's noise head (used by :meth:`noise_std` only)."""

    def rl_head_parameters(self) -> list[nn.Parameter]:
        """The RL heads' parameters (value and noise heads): trained by RL only, never by
        behaviour cloning (SFT leaves them alone)."""
        return [*self.value_parameters(), *self.noise_parameters()]

    def rl_head_state_keys(self) -> set[str]:
        """The ``state_dict`` keys of :meth:`rl_head_parameters`."""
        ids = {id(p) for p in self.rl_head_parameters()}
        return {name for name, p in self.named_parameters() if id(p) in ids}

    def unnormalize_actions(self, x: torch.Tensor, obs: Any = None) -> torch.Tensor:
        """Denoised latents (the normalised action space the flow lives in) → env actions, for the
        observations ``obs`` (models whose actions are relative to the state need them).
        Identity unless the model carries action statistics."""
        return x

    def normalize_actions(self, actions: torch.Tensor, obs: Any = None) -> torch.Tensor:
        """Inverse of :meth:`unnormalize_actions` (for training on demonstrations)."""
        return actions

    def flow_matching_loss(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        """Conditional flow-matching loss E‖v(x_t, t) − (ε − a)‖², x_t = t·ε + (1 − t)·a,
        t ~ U(0, 1) (behaviour cloning / SFT); ``actions`` are env actions, normalised here."""
        actions = self.normalize_actions(actions, obs)
        context = self.encode(obs)
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device, dtype=actions.dtype)
        tb = t.view(-1, *([1] * (actions.dim() - 1)))
        x_t = tb * noise + (1.0 - tb) * actions
        v, _ = self.velocity(context, x_t, t)
        return ((v - (noise - actions)) ** 2).mean()


def _plain(value):
    """A constructor argument as a checkpoint's ``config.json`` stores it (tuples as lists,
    config objects as their ``to_dict()``)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def map_context(fn, *contexts):
    """Apply ``fn`` to the tensors of one or more contexts of the same structure (tensors
    in dataclasses, dicts, lists, tuples; other leaves are taken from the first): e.g. take
    rows of a context, or concatenate chunks of them."""
    first = contexts[0]
    if isinstance(first, torch.Tensor):
        return fn(*contexts)
    if dataclasses.is_dataclass(first):
        fields = {f.name: map_context(fn, *(getattr(c, f.name) for c in contexts)) for f in dataclasses.fields(first)}
        return type(first)(**fields)
    if isinstance(first, dict):
        return {k: map_context(fn, *(c[k] for c in contexts)) for k in first}
    if isinstance(first, list | tuple):
        return type(first)(map_context(fn, *items) for items in zip(*contexts, strict=True))
    return first
