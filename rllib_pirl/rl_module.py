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

from typing import Any

import gymnasium as gym
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
from rllib_pirl.models.build import build_model
from rllib_pirl.settings import FlowModuleSettings

# Keys of the per-step chain data that travel from the env runners to the learner.
LATENTS = "flow_latents"  # (B, K+1, H, D)
STEPS = "flow_steps"  # (B, S) stochastic transitions
LOGP = "flow_logp"  # (B, N) log-probs of the PPO ratios (see `logprob_reduction`)
ENTROPY = "flow_entropy"  # (B,) mean step entropy
NOISE_STD = "flow_noise_std"  # (B,) mean std of the stochastic steps


class FlowRLModule(TorchRLModule, ValueFunctionAPI):
    """RLlib policy around a flow-matching action model (see module docstring)."""

    def setup(self):
        space = self.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 2:
            raise ValueError(
                f"A flow policy acts in action chunks: the env's action space must be "
                f"Box(shape=(chunk, action_dim)), got {space}. Wrap a per-step env with "
                "rllib_pirl.envs.ActionChunkWrapper (or use the registered 'ChunkedGym' env)."
            )
        # Without an algorithm config (e.g. a model checkpoint evaluated), the chunk is the env's.
        settings = FlowModuleSettings.from_model_config(self.model_config, action_chunk=space.shape[0])
        self.num_denoise_steps, self.action_chunk = settings.num_denoise_steps, settings.action_chunk
        self.noise_level, self.noise_std_range = settings.noise_level, tuple(settings.noise_std_range)
        self.logprob_reduction, self.exploration_kind = settings.logprob_reduction, settings.exploration
        self.inference_x0, self.exploration_x0 = settings.inference_x0, settings.exploration_x0
        if space.shape[0] != self.action_chunk:
            raise ValueError(
                f"The env executes chunks of {space.shape[0]} actions but config "
                f"action_chunk={self.action_chunk}. Make them agree (env_config.action_chunk)."
            )
        self.env_action_dim = space.shape[1]
        self.model = build_model(self.model_config, self.observation_space, space, self.noise_std_range)
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
