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

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tree
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.torch_utils import convert_to_torch_tensor

from rllib_pirl.flow import (
    LearnedNoiseExploration,
    SDEExploration,
    chain_log_prob,
    reduce_log_prob,
    sample_chain,
)
from rllib_pirl.models.base import map_context
from rllib_pirl.models.build import build_model
from rllib_pirl.settings import FlowModuleSettings

# Keys of the per-step chain data that travel from the env runners to the learner.
LATENTS = "flow_latents"  # (B, K+1, H, D)
STEPS = "flow_steps"  # (B, S) stochastic transitions
LOGP = "flow_logp"  # (B, N) log-probs of the PPO ratios (see `logprob_reduction`)
ENTROPY = "flow_entropy"  # (B,) mean step entropy
NOISE_STD = "flow_noise_std"  # (B,) mean std of the stochastic steps
NOISE_LEVEL = "flow_noise_level"  # (B,) Flow-SDE: the noise level a of the sample's rollout
NOISE_RANGE = "flow_noise_std_range"  # (B, 2) Flow-Noise: the std bounds of the sample's rollout
ROW = "flow_row"  # (B,) the sample's row in its train batch (finds its cached encoding)
REF_KL = "flow_ref_kl"  # (B,) the learner's KL to the reference policy (``ref_kl_coeff``)
# Key of the frozen weights' fingerprint in a trainable-only state (weight sync).
FROZEN_FINGERPRINT = "__frozen_fingerprint__"


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
        self.settings = settings = FlowModuleSettings.from_model_config(self.model_config, action_chunk=space.shape[0])
        self.num_denoise_steps, self.action_chunk = settings.num_denoise_steps, settings.action_chunk
        # The exploration noise now (schedules: at env step 0; the algorithm sets it each iteration).
        self.noise_level, self.noise_std_range = settings.noise_at(0)
        self.logprob_reduction, self.exploration_kind = settings.logprob_reduction, settings.exploration
        self.inference_x0, self.exploration_x0 = settings.inference_x0, settings.exploration_x0
        self.sde_steps = settings.sde_steps
        if space.shape[0] != self.action_chunk:
            raise ValueError(
                f"The env executes chunks of {space.shape[0]} actions but config "
                f"action_chunk={self.action_chunk}. Make them agree (env_config.action_chunk)."
            )
        self.env_action_dim = space.shape[1]
        # Every process (learners, env runners) builds the same initial weights from init_seed
        # (the algorithm config sets it): frozen weights are then never sent, only checked.
        with torch.random.fork_rng(devices=[]):
            if self.model_config.get("init_seed") is not None:
                torch.manual_seed(int(self.model_config["init_seed"]))
            self.model = build_model(self.model_config, self.observation_space, space, self.noise_std_range)
        if self.model.horizon < self.action_chunk or self.model.action_dim < self.env_action_dim:
            raise ValueError(
                f"The model predicts {self.model.horizon} x {self.model.action_dim} actions, "
                f"fewer than the env's chunk {self.action_chunk} x {self.env_action_dim}."
            )
        if self.exploration_kind == "sde":
            # Flow-SDE never uses the noise head: frozen, it gets no optimizer, no gradient that
            # several learners (DDP) would wait for, and no place in the weight sync.
            for p in self.model.noise_parameters():
                p.requires_grad_(False)
        self._frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        self._frozen_fingerprint = frozen_fingerprint(self.model)

    # -- pieces ---------------------------------------------------------------------
    def set_exploration_noise(self, noise_level: float, noise_std_range: tuple[float, float]) -> None:
        """The noise of the next rollouts (the algorithm sets it from the schedules)."""
        self.noise_level, self.noise_std_range = float(noise_level), tuple(map(float, noise_std_range))

    def exploration(self, batch: dict[str, Any] | None = None, model=None):
        """The one piece in which Flow-SDE and Flow-Noise differ: at the module's current
        noise, or, for a train ``batch``, at the noise each row's rollout used (recorded in
        it), so that a schedule step or a PBT mutation between rollout and update never
        changes the likelihood the ratios compare. Flow-Noise's std comes from ``model``'s
        noise head (default: this module's model; the reference policy's for its KL)."""
        if self.exploration_kind == "sde":
            level = batch[NOISE_LEVEL] if batch is not None and NOISE_LEVEL in batch else self.noise_level
            return SDEExploration(level, all_steps=self.sde_steps == "all")
        bounds = self.noise_std_range
        if batch is not None and NOISE_RANGE in batch:
            bounds = (batch[NOISE_RANGE][:, 0], batch[NOISE_RANGE][:, 1])
        model = model if model is not None else self.model
        return LearnedNoiseExploration(lambda hidden: model.noise_std(hidden, bounds))

    # The reference policy π_ref of ``ref_kl_coeff`` (learners only; not a submodule: neither
    # trained, nor saved, nor synced to the env runners, nor wrapped by DDP).
    _reference: torch.nn.Module | None = None

    def keep_reference(self) -> None:
        """Keep a frozen copy of the model's current weights as the reference policy (the
        learner calls it once, when built: the run's starting weights, e.g. the SFT
        checkpoint, also after a restore). Frozen parameters (π0's VLM) are shared, not
        copied: only the trainable part costs memory again."""
        shared = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        reference = copy.deepcopy(self.model, shared).requires_grad_(False)
        object.__setattr__(self, "_reference", reference)

    def _noise_record(self, b: int, device) -> dict[str, torch.Tensor]:
        """The rollout's noise, one row per sample (see :meth:`exploration`)."""
        if self.exploration_kind == "sde":
            return {NOISE_LEVEL: torch.full((b,), self.noise_level, dtype=torch.float32, device=device)}
        bounds = torch.tensor(self.noise_std_range, dtype=torch.float32, device=device)
        return {NOISE_RANGE: bounds.expand(b, 2).clone()}

    def _velocity_fn(self, context, model=None):
        """v(x, t) of ``model`` (default: this module's; the reference policy's for its KL)."""
        model = model if model is not None else self.model
        return lambda x, t: model.velocity(context, x, t)

    def _x0(self, batch_size, zeros: bool):
        """x_0 of a chain: latents are fp32 whatever the transformer's dtype (bf16 π0)."""
        shape = (batch_size, self.model.horizon, self.model.action_dim)
        device = next(self.model.parameters()).device
        if zeros:
            return torch.zeros(shape, dtype=torch.float32, device=device)
        return torch.randn(shape, dtype=torch.float32, device=device)

    def _crop(self, x):
        return x[:, : self.action_chunk, : self.env_action_dim]

    def _env_actions(self, chain, obs):
        return self._crop(self.model.unnormalize_actions(chain.actions, obs))

    def _reduce(self, log_prob):
        return reduce_log_prob(log_prob, self.action_chunk, self.env_action_dim, self.logprob_reduction)

    # -- forward passes -------------------------------------------------------------
    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        context = self.model.encode(batch[Columns.OBS])
        b = num_rows(batch[Columns.OBS])
        chain = sample_chain(
            self._velocity_fn(context), self._x0(b, self.inference_x0 == "zeros"), self.num_denoise_steps
        )
        return {Columns.ACTIONS: self._env_actions(chain, batch[Columns.OBS])}

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        context = self.model.encode(batch[Columns.OBS])
        b = num_rows(batch[Columns.OBS])
        chain = sample_chain(
            self._velocity_fn(context),
            self._x0(b, self.exploration_x0 == "zeros"),
            self.num_denoise_steps,
            self.exploration(),
        )
        logp = self._reduce(chain.log_prob)
        return {
            Columns.ACTIONS: self._env_actions(chain, batch[Columns.OBS]),
            Columns.ACTION_LOGP: logp.sum(dim=1),
            LATENTS: chain.latents,
            STEPS: chain.steps,
            LOGP: logp,
            **self._noise_record(b, logp.device),
        }

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        context = self._train_context(batch)
        chain = chain_log_prob(
            self._velocity_fn(context),
            batch[LATENTS],
            batch[STEPS],
            self.exploration(batch),
            self._reference_of(batch, context),
        )
        out = {
            Columns.EMBEDDINGS: context,
            LOGP: self._reduce(chain.log_prob),
            ENTROPY: self._crop(chain.entropy).flatten(1).mean(1),
            NOISE_STD: chain.std,
        }
        if chain.kl is not None:  # per sample, reduced like the log-probs: mean (or sum) over the action elements
            out[REF_KL] = self._reduce(chain.kl).mean(1)
        return out

    def _reference_of(self, batch, context):
        """The reference policy's velocity function and exploration for a train batch, or None."""
        reference = self._reference
        if reference is None:
            return None
        if not self.model.frozen_encoding:  # a frozen encoding (π0's prefix) is the reference's too
            with torch.no_grad():
                context = reference.encode(batch[Columns.OBS])
        return self._velocity_fn(context, reference), self.exploration(batch, reference)

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None):
        if embeddings is None:
            memo, self._values_memo = self._values_memo, None
            if memo is not None and memo[0] is batch:  # RLlib's GAE after prepare_train_batch
                return memo[1]
            embeddings = self._train_context(batch)
        return self.model.value(embeddings).float()

    # -- the learner's pass over a train batch ----------------------------------------
    _values_memo: tuple[dict, torch.Tensor] | None = None
    _encodings: Any = None

    @torch.no_grad()
    def prepare_train_batch(
        self, batch: dict[str, Any], chunk_size: int, prefix_cache: str, critic: bool = True
    ) -> torch.Tensor:
        """One no-grad pass over a learner's train batch, ``chunk_size`` rows at a time: the
        values V(s) at the weights that collected it (V_old of the value clipping and GAE's
        values: the same numbers, computed once — :meth:`compute_values` hands them to GAE;
        ``critic=False``: zeros, GAE without a value baseline)
        and, when the model's encoding is frozen (π0's prefix) and ``prefix_cache`` is not
        "off", each sample's encoding, kept (on the device or in host memory) so that every
        epoch and minibatch of the update reuses it instead of recomputing it. Rows are
        numbered in ``batch[ROW]``, which travels with them through RLlib's shuffles."""
        obs = batch[Columns.OBS]
        n = num_rows(obs)
        keep = prefix_cache != "off" and self.model.frozen_encoding
        values, encodings = [], []
        for start in range(0, n, chunk_size) if critic or keep else ():  # no critic: encode only to keep
            context = self.model.encode(rows_of(obs, start, start + chunk_size))
            if critic:
                values.append(self.model.value(context).float())
            if keep:
                encodings.append(map_context(_host_copy, context) if prefix_cache == "cpu" else context)
        device = next(self.model.parameters()).device
        values = torch.cat(values) if critic else torch.zeros(n, dtype=torch.float32, device=device)
        self._encodings = map_context(lambda *xs: torch.cat(xs), *encodings) if keep else None
        batch[ROW] = torch.arange(n, device=values.device)
        self._values_memo = (batch, values)
        return values

    def release_train_batch(self) -> None:
        """Free the encodings kept for the last train batch (after its update)."""
        self._encodings, self._values_memo = None, None

    def _train_context(self, batch: dict[str, Any]):
        """The encoding of a (mini/micro-)batch of the train batch: its rows of the kept
        encodings, or computed."""
        if self._encodings is not None and ROW in batch:
            device = batch[ROW].device
            rows = batch[ROW].to(_first_tensor(self._encodings).device)
            return map_context(lambda x: x[rows].to(device, non_blocking=True), self._encodings)
        return self.model.encode(batch[Columns.OBS])

    # -- state: what the learners send the env runners ------------------------------
    @override(TorchRLModule)
    def get_state(self, components=None, *, not_components=None, inference_only: bool = False, **kwargs):
        """The module's weights. ``inference_only`` (what RLlib sends the env runners after
        each update) leaves out the frozen parameters (π0's VLM, Flow-SDE's noise head),
        which every process builds itself from the same checkpoint or seed, and adds their
        fingerprint so that :meth:`set_state` can check they agree."""
        state = self.state_dict()
        if inference_only:
            state = {k: v for k, v in state.items() if k not in self._frozen}
        # numpy has no bfloat16: those tensors travel as CPU torch tensors (Ray pickles them)
        state = {k: v.detach().cpu() if v.dtype == torch.bfloat16 else convert_to_numpy(v) for k, v in state.items()}
        if inference_only:
            state[FROZEN_FINGERPRINT] = self._frozen_fingerprint
        return state

    @override(TorchRLModule)
    def set_state(self, state) -> None:
        """Load a state from :meth:`get_state`: the whole one (checkpoints) or the
        trainable part (weight sync), whose frozen fingerprint must match ours."""
        state = dict(state)
        fingerprint = state.pop(FROZEN_FINGERPRINT, None)
        if fingerprint is not None and not np.array_equal(
            np.asarray(fingerprint, np.float32), self._frozen_fingerprint
        ):
            raise ValueError(
                "The frozen weights of this process's model differ from the sender's (only trainable weights are "
                "synced): every process must build the model from the same files (init_checkpoint / pretrained "
                "paths that hold the same weights on every node) or, without files, the same model_config.init_seed."
            )
        missing, unexpected = self.load_state_dict(convert_to_torch_tensor(state), strict=False)
        missing = [k for k in missing if k not in self._frozen]
        if missing or unexpected:
            raise ValueError(f"The state does not fit the model: missing {missing}, unexpected {unexpected}.")
        if any(k in self._frozen for k in state):  # a whole state (e.g. a checkpoint) replaced frozen weights
            self._frozen_fingerprint = frozen_fingerprint(self.model)


def frozen_fingerprint(model: torch.nn.Module) -> np.ndarray:
    """A cheap fingerprint of the frozen parameters: per tensor, the sum of up to 1024 evenly
    spaced elements (in fp64 on the CPU, so that it does not depend on the device; stored as
    fp32, which RLlib's state conversions keep exactly)."""
    sums = []
    for p in model.parameters():
        if not p.requires_grad:
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)][:1024]
            sums.append(sample.to("cpu", torch.float64).sum().item())
    return np.asarray(sums, np.float32)


def _first_tensor(context) -> torch.Tensor:
    found = []
    map_context(lambda x: found.append(x) or x, context)
    return found[0]


def _host_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` in host memory, pinned when there is a GPU (fast, asynchronous copies back)."""
    x = x.to("cpu")
    return x.pin_memory() if torch.cuda.is_available() else x


def num_rows(batch) -> int:
    """Rows of a (possibly nested dict) batch or observation batch."""
    return len(tree.flatten(batch)[0])


def rows_of(batch, start: int, stop: int):
    """Rows ``start:stop`` of every column (nested observation dicts included)."""
    return tree.map_structure(lambda x: x[start:stop], batch)
