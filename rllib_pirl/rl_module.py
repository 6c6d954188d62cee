"""The RLModule that turns any :class:`FlowActionModel` into an RLlib policy.

- inference (evaluation): deterministic ODE chain;
- exploration (rollouts): stochastic chain (Flow-SDE: one random step k* per call;
  Flow-Noise: every step), returning the actions itself together with
  ``action_logp`` and the chain data the loss needs (RLlib stores every returned key
  per step and hands it back in the train batch under the same name); values are
  not computed here but in the learner (rollouts cost what the ODE costs);
- train: recompute the log-prob of the stored stochastic transition(s) and the values.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from rllib_pirl.flow import (
    LearnedNoiseExploration,
    SDEExploration,
    chain_log_prob,
    reduce_log_prob,
    sample_chain,
)

# Keys of the per-step chain data that travel from the env runners to the learner.
LATENTS = "flow_latents"  # (B, K+1, H, D)
STEPS = "flow_steps"  # (B, S) stochastic transitions
LOGP = "flow_logp"  # (B, N) log-probs of the PPO ratios (see `logprob_reduction`)
ENTROPY = "flow_entropy"  # (B,) mean step entropy
NOISE_STD = "flow_noise_std"  # (B,) mean std of the stochastic steps

EXPLORATIONS = ("sde", "noise")
INFERENCE_X0 = ("zeros", "noise")
DEFAULT_MODEL = "rllib_pirl.models:StateFlowPolicy"


def import_object(path: str):
    """``"package.module:Name"`` → the object."""
    if ":" not in path:
        raise ValueError(f"Expected 'package.module:Name', got {path!r}")
    module_name, name = path.split(":", 1)
    return getattr(importlib.import_module(module_name), name)


def build_model(model_config: dict[str, Any], observation_space, action_space):
    """Instantiate ``model_config["model_class"]`` for these spaces, then load
    ``model_config["init_checkpoint"]`` (an SFT checkpoint folder) when given.

    A model class with a ``from_spaces`` classmethod builds itself; otherwise it gets
    ``obs_dim``, ``horizon`` (= the chunk), ``action_dim`` and ``model_kwargs``.
    """
    from rllib_pirl.models.checkpoint import load_model

    init = model_config.get("init_checkpoint")
    if init:
        return load_model(
            init, observation_space, action_space, model_config.get("noise_std_range"), model_config.get("instructions")
        )
    cls = model_config.get("model_class", DEFAULT_MODEL)
    if isinstance(cls, str):
        cls = import_object(cls)
    kwargs = dict(model_config.get("model_kwargs") or {})
    kwargs.setdefault("noise_std_range", tuple(model_config.get("noise_std_range", (0.08, 0.16))))
    if getattr(cls, "uses_instructions", False) and model_config.get("instructions") is not None:
        kwargs.setdefault("instructions", list(model_config["instructions"]))
    if hasattr(cls, "from_spaces"):
        return cls.from_spaces(observation_space, action_space, **kwargs)
    if not isinstance(observation_space, gym.spaces.Box):
        raise TypeError(
            f"{cls.__name__} needs a flat Box observation space, got {observation_space}. "
            "Use a model class for dict/image observations."
        )
    return cls(
        obs_dim=int(np.prod(observation_space.shape)),
        horizon=action_space.shape[0],
        action_dim=action_space.shape[1],
        **kwargs,
    )


class FlowRLModule(TorchRLModule, ValueFunctionAPI):
    """RLlib policy around a flow-matching action model (see module docstring)."""

    def setup(self):
        cfg = self.model_config
        space = self.action_space
        self.num_denoise_steps = int(cfg.get("num_denoise_steps", 4))
        self.action_chunk = int(cfg.get("action_chunk", space.shape[0] if space is not None else 1))
        self.logprob_reduction = cfg.get("logprob_reduction", "sum")
        self.exploration_kind = cfg.get("exploration", "sde")
        self.noise_level = float(cfg.get("noise_level", 0.5))
        self.inference_x0 = cfg.get("inference_x0", "zeros")
        self.exploration_x0 = cfg.get("exploration_x0", "noise")
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 2:
            raise ValueError(
                f"A flow policy acts in action chunks: the env's action space must be "
                f"Box(shape=(chunk, action_dim)), got {space}. Wrap a per-step env with "
                "rllib_pirl.envs.ActionChunkWrapper (or use the registered 'ChunkedGym' env)."
            )
        if space.shape[0] != self.action_chunk:
            raise ValueError(
                f"The env executes chunks of {space.shape[0]} actions but config "
                f"action_chunk={self.action_chunk}. Make them agree (env_config.action_chunk)."
            )
        if self.exploration_kind not in EXPLORATIONS:
            raise ValueError(f"exploration must be one of {EXPLORATIONS}, got {self.exploration_kind!r}")
        for key in ("inference_x0", "exploration_x0"):
            if getattr(self, key) not in INFERENCE_X0:
                raise ValueError(f"{key} must be one of {INFERENCE_X0}, got {getattr(self, key)!r}")
        self.env_action_dim = space.shape[1]
        self.model = build_model(cfg, self.observation_space, space)
        if self.model.horizon < self.action_chunk or self.model.action_dim < self.env_action_dim:
            raise ValueError(
                f"The model predicts {self.model.horizon} x {self.model.action_dim} actions, "
                f"fewer than the env's chunk {self.action_chunk} x {self.env_action_dim}."
            )

    # -- pieces ---------------------------------------------------------------------
    def exploration(self):
        """The one piece in which Flow-SDE and Flow-Noise differ."""
        if self.exploration_kind == "sde":
            return SDEExploration(self.noise_level)
        return LearnedNoiseExploration(self.model.noise_std)

    def _velocity_fn(self, context):
        return lambda x, t: self.model.velocity(context, x, t)

    def _x0(self, batch_size, zeros: bool):
        shape = (batch_size, self.model.horizon, self.model.action_dim)
        param = next(self.model.parameters())
        if zeros:
            return torch.zeros(shape, dtype=param.dtype, device=param.device)
        return torch.randn(shape, dtype=param.dtype, device=param.device)

    def _crop(self, x):
        return x[:, : self.action_chunk, : self.env_action_dim]

    def _env_actions(self, chain):
        return self._crop(self.model.unnormalize_actions(chain.actions))

    def _reduce(self, log_prob):
        return reduce_log_prob(log_prob, self.action_chunk, self.env_action_dim, self.logprob_reduction)

    # -- forward passes -------------------------------------------------------------
    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        context = self.model.encode(batch[Columns.OBS])
        b = _batch_size(batch[Columns.OBS])
        chain = sample_chain(
            self._velocity_fn(context), self._x0(b, self.inference_x0 == "zeros"), self.num_denoise_steps
        )
        return {Columns.ACTIONS: self._env_actions(chain)}

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        context = self.model.encode(batch[Columns.OBS])
        b = _batch_size(batch[Columns.OBS])
        chain = sample_chain(
            self._velocity_fn(context),
            self._x0(b, self.exploration_x0 == "zeros"),
            self.num_denoise_steps,
            self.exploration(),
        )
        logp = self._reduce(chain.log_prob)
        return {
            Columns.ACTIONS: self._env_actions(chain),
            Columns.ACTION_LOGP: logp.sum(dim=1),
            LATENTS: chain.latents,
            STEPS: chain.steps,
            LOGP: logp,
        }

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        context = self.model.encode(batch[Columns.OBS])
        chain = chain_log_prob(self._velocity_fn(context), batch[LATENTS], batch[STEPS], self.exploration())
        return {
            Columns.EMBEDDINGS: context,
            LOGP: self._reduce(chain.log_prob),
            ENTROPY: self._crop(chain.entropy).flatten(1).mean(1),
            NOISE_STD: chain.std,
        }

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None):
        if embeddings is None:
            embeddings = self.model.encode(batch[Columns.OBS])
        return self.model.value(embeddings).float()

    def get_non_inference_attributes(self):
        return []


def _batch_size(obs) -> int:
    """Batch size of a (possibly nested dict) observation batch."""
    if isinstance(obs, dict):
        return _batch_size(next(iter(obs.values())))
    return obs.shape[0]
