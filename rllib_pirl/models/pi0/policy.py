"""π0 and π0.5 as :class:`FlowActionModel` s (the RLModule runs either unchanged).

Both: the VLM prefix (cameras + prompt) runs once per observation into a KV cache
(:meth:`encode`); every denoising step runs only the action expert over the
suffix (:meth:`velocity`). With ``train_expert_only`` (the default) the VLM is
frozen and its prefix is computed without gradient, in rollouts and in the learner.

They differ in the suffix and the critic:

- π0: suffix = [state token, H action tokens]; action token = MLP([W·x_t, φ(t)]),
  φ the sinusoidal time embedding; the state token is a block the actions see but
  that does not see them. Value head on the mean of the expert's action-token
  outputs (input detached), evaluated at x = 0, t = 1 (a function of the
  observation only).
- π0.5: the normalised state is discretised into the prompt; suffix = H action
  tokens W·x_t; the time conditions every expert norm (adaRMS, cond =
  swish(MLP(φ(t)))). Value head on the mean of the VLM's prefix outputs (detached).

Flow-Noise's noise head reads the expert's action-token outputs of each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rllib_pirl.flow import bounded_std
from rllib_pirl.models.base import FlowActionModel
from rllib_pirl.models.mlp import mlp
from rllib_pirl.models.pi0.backbone import PaliGemmaWithExpert, PrefixCache
from rllib_pirl.models.pi0.config import PiConfig
from rllib_pirl.models.pi0.inputs import (
    NORM_CONVENTIONS,
    PROMPT_FORMATS,
    PromptTokenizer,
    affine_from_stats,
    discretize_state,
    resize_with_pad,
)
from rllib_pirl.settings import DTYPES


def _env_features(observation_space) -> dict:
    """The env's camera keys (its (H, W, 3) entries, in order) and state size, as
    :func:`~rllib_pirl.models.pi0.layouts.load_pretrained` takes them."""
    return {
        "env_cameras": [k for k, s in observation_space.spaces.items() if len(s.shape) == 3 and s.shape[-1] == 3],
        "env_state_dim": int(np.prod(observation_space["state"].shape)),
    }


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """φ(t) = [sin(2π·t/p_i), cos(2π·t/p_i)], p_i = p_min·(p_max/p_min)^(i/(dim/2 − 1)), in fp32."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = t.float()[:, None] * (2.0 * math.pi / period)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@dataclass
class PiContext:
    """What :meth:`PiPolicy.encode` computes once per observation."""

    cache: PrefixCache
    state: torch.Tensor  # (B, max_state_dim) normalised, zero-padded


class PiPolicy(FlowActionModel):
    """π0 / π0.5 flow policy with πRL's value and noise heads (see module docstring).

    ``state_dim``: the env's state dims (≤ ``max_state_dim``); ``camera_keys``: the
    observation's images, in the model's camera order (None: an empty slot — a black image
    the prefix masks out, lerobot's missing camera); ``instructions``: the prompt of each
    ``task_id``; ``tokenizer``: path of PaliGemma's SentencePiece model; ``prompt_format``:
    ``task`` / ``task_lerobot`` / ``task_state`` (:mod:`~rllib_pirl.models.pi0.inputs`;
    default π0 ``task``, π0.5 ``task_state``); ``norm_stats`` / ``norm_modes``:
    ``{"state": {...}, "actions": {...}}`` statistics (mean/std/min/max/q01/q99/q10/q90) and
    their modes, under ``norm_convention`` (``openpi`` / ``lerobot``, with ``norm_eps``);
    ``env_action_dim``: the robot's action dims (default: the action statistics', else
    ``max_action_dim``); ``num_inference_steps``: the denoising steps of
    :meth:`predict_action_chunk` by default; ``n_action_steps``: the chunk the checkpoint's
    tool executes (recorded, exported); ``camera_names``: the cameras' lerobot feature names
    (exported); ``relative_actions``: per action dim, whether it is predicted relative to the
    state's same dim (env action = model action + state there; lerobot's ``use_relative_actions``,
    openpi's ``extra_delta_transform``, e.g. ``[true] * 6 + [false]`` for LIBERO's 7-D actions;
    ``false`` / None: all absolute);
    ``dtype``: the transformer's (``bfloat16`` halves GPU memory).
    """

    uses_instructions = True  # the RLModule passes the env's instructions

    def __init__(
        self,
        pi_config: dict[str, Any] | PiConfig,
        state_dim: int,
        camera_keys: Sequence[str],
        tokenizer: str,
        instructions: Sequence[str] | None = None,
        norm_stats: dict[str, dict[str, Sequence[float]]] | None = None,
        norm_modes: dict[str, str] | None = None,
        noise_std_range: Sequence[float] = (0.08, 0.16),
        value_hidden_sizes: Sequence[int] = (256,),
        noise_hidden_sizes: Sequence[int] = (128,),
        train_expert_only: bool = True,
        dtype: str = "float32",
        prompt_format: str | None = None,
        norm_convention: str = "openpi",
        norm_eps: float | None = None,
        env_action_dim: int | None = None,
        num_inference_steps: int = 10,
        n_action_steps: int | None = None,
        camera_names: Sequence[str] | None = None,
        relative_actions: Sequence[bool] | bool | None = None,
    ):
        super().__init__()
        config = pi_config if isinstance(pi_config, PiConfig) else PiConfig.from_dict(pi_config)
        default_modes = {"state": "quantile", "actions": "quantile"} if config.variant == "pi05" else {}
        norm_modes = {"state": "mean_std", "actions": "mean_std", **default_modes, **(norm_modes or {})}
        self.init_kwargs["norm_modes"] = norm_modes
        if state_dim > config.max_state_dim:
            raise ValueError(f"The env's state has {state_dim} dims, more than the model's {config.max_state_dim}.")
        if not camera_keys or all(k is None for k in camera_keys):
            raise ValueError("π0 / π0.5 need at least one camera image in the observation (camera_keys is empty).")
        prompt_format = prompt_format or ("task_state" if config.variant == "pi05" else "task")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.init_kwargs["prompt_format"] = self.prompt_format = prompt_format
        if norm_convention not in NORM_CONVENTIONS:
            raise ValueError(f"norm_convention must be one of {tuple(NORM_CONVENTIONS)}, got {norm_convention!r}")
        self.norm_convention = norm_convention
        self.norm_eps = NORM_CONVENTIONS[norm_convention] if norm_eps is None else float(norm_eps)
        self.init_kwargs["norm_eps"] = self.norm_eps
        self.num_inference_steps = int(num_inference_steps)
        if camera_names is not None and len(camera_names) != len(camera_keys):
            raise ValueError(f"camera_names {list(camera_names)} and camera_keys {list(camera_keys)} differ in length.")
        self.config = config
        self.horizon, self.action_dim = config.chunk_size, config.max_action_dim
        self.state_dim, self.camera_keys = state_dim, list(camera_keys)
        self.std_min, self.std_max = float(noise_std_range[0]), float(noise_std_range[1])
        self.train_expert_only = train_expert_only
        self.tokenizer = PromptTokenizer(tokenizer, config.max_token_len)
        if self.tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"The tokenizer {tokenizer} has {self.tokenizer.vocab_size} tokens, more than the model's "
                f"vocabulary of {config.vocab_size}: wrong tokenizer for this checkpoint."
            )
        self.instructions = list(instructions) if instructions else [""]
        self.norm_modes = norm_modes
        self.set_norm_stats(norm_stats)
        actions_stats = next(iter(((norm_stats or {}).get("actions") or {}).values()), None)
        if env_action_dim and actions_stats is not None and len(actions_stats) != env_action_dim:
            raise ValueError(
                f"The action statistics have {len(actions_stats)} dims, the env's actions {env_action_dim}: "
                "this checkpoint was trained for another robot / control mode."
            )
        env_action_dim = env_action_dim or (len(actions_stats) if actions_stats is not None else None)
        #: the robot's action dims (None: not recorded; the env's crop decides)
        self.env_action_dim = int(env_action_dim) if env_action_dim else None
        self.init_kwargs["env_action_dim"] = self.env_action_dim
        #: per env action dim: predicted relative to the state's same dim (None: all absolute)
        self.relative_actions = [bool(v) for v in relative_actions] if relative_actions not in (None, False) else None
        self.init_kwargs["relative_actions"] = self.relative_actions
        if self.relative_actions is not None and len(self.relative_actions) > min(state_dim, config.max_action_dim):
            raise ValueError(
                f"relative_actions has {len(self.relative_actions)} dims: more than the state's {state_dim} "
                f"or the model's {config.max_action_dim} action dims."
            )
        self._check_prompt_lengths()
        if prompt_format != "task_state":
            # A prompt without the state does not change with it: tokenise each task once.
            tokens, mask = self.tokenizer.pad([self.tokenizer.ids(prompt_format, text) for text in self.instructions])
            self.register_buffer("task_tokens", tokens, persistent=False)
            self.register_buffer("task_token_mask", mask, persistent=False)

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        width = config.expert.width
        # The transformer may compute in bf16 (mixed precision); the projections, RL heads,
        # latents and log-probs stay fp32.
        self.backbone = PaliGemmaWithExpert(config, getattr(torch, dtype), frozen_vlm=train_expert_only)
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        if config.variant == "pi0":
            self.state_proj = nn.Linear(config.max_state_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
        else:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        value_in = width if config.variant == "pi0" else config.vlm.width
        self.value_head = mlp([value_in, *value_hidden_sizes, 1])
        self.noise_head = mlp([width, *noise_hidden_sizes, config.max_action_dim])
        if train_expert_only:
            self.backbone.paligemma.requires_grad_(False)

    @property
    def frozen_encoding(self) -> bool:
        """The prefix (VLM) is frozen unless the whole model trains."""
        return self.train_expert_only

    def set_norm_stats(self, norm_stats: dict[str, dict[str, Sequence[float]]] | None) -> None:
        """Use these state / action statistics (in ``norm_modes``) from now on."""
        self.norm_stats = norm_stats
        self.init_kwargs["norm_stats"] = norm_stats
        for name, dim in (("state", self.config.max_state_dim), ("actions", self.config.max_action_dim)):
            loc, scale = affine_from_stats(
                (norm_stats or {}).get(name), self.norm_modes[name], dim, self.norm_convention, self.norm_eps
            )
            if hasattr(self, f"{name}_loc"):  # replace the values, keep the buffers' device
                getattr(self, f"{name}_loc").copy_(torch.from_numpy(loc))
                getattr(self, f"{name}_scale").copy_(torch.from_numpy(scale))
            else:
                self.register_buffer(f"{name}_loc", torch.from_numpy(loc), persistent=False)
                self.register_buffer(f"{name}_scale", torch.from_numpy(scale), persistent=False)

    def _check_prompt_lengths(self) -> None:
        """Prompts longer than ``max_token_len`` would be cut: refuse them up front
        (π0.5: with the longest state string, every bin three digits)."""
        limit = self.config.max_token_len
        with_state = self.prompt_format == "task_state"
        for text in self.instructions:
            n = len(self.tokenizer.ids(self.prompt_format, text, [255] * self.state_dim))
            if n > limit:
                raise ValueError(
                    f"The prompt for {text!r} takes {n} tokens"
                    + (f" (with a {self.state_dim}-D state)" if with_state else "")
                    + f", more than max_token_len={limit}: raise pi_config.max_token_len or shorten the instruction."
                )

    # -- construction from env spaces ------------------------------------------------
    @classmethod
    def from_spaces(cls, observation_space, action_space, pretrained: str | None = None, **kwargs):
        """Build for a Dict observation with ``state``, camera images (H, W, 3) and
        ``task_id``; ``pretrained`` loads a lerobot / openpi / RLinf / rllib_pirl checkpoint,
        its cameras mapped to the env's (or refused, see :func:`~rllib_pirl.models.pi0.layouts.
        resolve_policy_kwargs`)."""
        if not isinstance(observation_space, gym.spaces.Dict) or "state" not in observation_space.spaces:
            raise TypeError(
                f"π0 / π0.5 need a Dict observation with 'state' and camera images, got {observation_space}. "
                "Use env_config.obs_mode: rgb (or state+rgb)."
            )
        env = _env_features(observation_space)
        if pretrained:
            from rllib_pirl.models.pi0.layouts import load_pretrained

            model = load_pretrained(pretrained, cls, **env, **kwargs)
        else:
            kwargs.setdefault("camera_keys", env["env_cameras"])
            kwargs.setdefault("state_dim", env["env_state_dim"])
            kwargs.setdefault("env_action_dim", action_space.shape[-1])
            kwargs.setdefault("pi_config", PiConfig.tiny().to_dict())
            model = cls(**kwargs)
        model.check_spaces(observation_space, action_space)
        return model

    @classmethod
    def load_checkpoint(cls, path, observation_space=None, action_space=None, noise_std_range=None, instructions=None):
        """Load a checkpoint folder (ours, lerobot's, openpi's or RLinf's) as the RL start."""
        from rllib_pirl.models.pi0.layouts import load_pretrained

        spaces = observation_space is not None and action_space is not None
        env = _env_features(observation_space) if spaces else {}
        model = load_pretrained(path, cls, noise_std_range=noise_std_range, instructions=instructions, **env)
        if spaces:
            model.check_spaces(observation_space, action_space)
        return model

    def save_pretrained(self, path: str, layout: str = "lerobot", metadata: dict | None = None) -> None:
        """Write the lerobot (or openpi) layout with statistics, tokenizer and RL heads."""
        from rllib_pirl.models.pi0.layouts import save_pretrained

        save_pretrained(self, path, layout, metadata)

    def check_spaces(self, observation_space, action_space) -> None:
        """Clear errors when the env's cameras, state, actions or chunk do not fit the model."""
        c = self.config
        unknown = [k for k in self.camera_keys if k is not None and k not in observation_space.spaces]
        if unknown:
            raise ValueError(
                f"camera_keys {unknown} are not in the observation (it has {list(observation_space)}): "
                "model_kwargs.camera_keys lists the env's cameras in the model's order."
            )
        state = int(np.prod(observation_space["state"].shape))
        if state != self.state_dim:
            raise ValueError(f"The model was built for a {self.state_dim}-D state, the env gives {state} dims.")
        chunk, dims = action_space.shape
        if chunk > c.chunk_size or dims > c.max_action_dim:
            raise ValueError(
                f"The env wants chunks of {chunk} x {dims} actions; the model predicts {c.chunk_size} x "
                f"{c.max_action_dim}. Lower env_config.action_chunk or use a model with larger chunk_size."
            )
        if self.env_action_dim is not None and dims != self.env_action_dim:
            raise ValueError(
                f"The checkpoint's actions have {self.env_action_dim} dims (its output features / action "
                f"statistics), the env's {dims}: this checkpoint was trained for another robot / control mode."
            )

    # -- observation pipeline --------------------------------------------------------
    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        padded = F.pad(state.float().flatten(1), (0, self.config.max_state_dim - self.state_dim))
        return (padded - self.state_loc) / self.state_scale

    def _state_offset(self, obs, like: torch.Tensor) -> torch.Tensor | None:
        """The raw state on the dims of ``relative_actions`` (0 elsewhere), (B, 1, dims), or None."""
        if self.relative_actions is None:
            return None
        if obs is None or "state" not in obs:
            raise ValueError("This model's actions are relative to the state: pass the observations (their 'state').")
        mask = torch.tensor(self.relative_actions, dtype=like.dtype, device=like.device)
        state = torch.as_tensor(obs["state"]).to(like).flatten(1)[:, : len(mask)]
        return (state * mask[: state.shape[1]])[:, None, :]

    def normalize_actions(self, actions, obs=None):
        """Env actions → the flow's normalised space: the state subtracted on the
        ``relative_actions`` dims (lerobot's RelativeActionsProcessorStep, openpi's DeltaActions), then
        normalised."""
        offset = self._state_offset(obs, actions)
        if offset is not None:
            actions = torch.cat([actions[..., : offset.shape[-1]] - offset, actions[..., offset.shape[-1] :]], -1)
        padded = F.pad(actions, (0, self.config.max_action_dim - actions.shape[-1]))
        return (padded - self.actions_loc) / self.actions_scale

    def unnormalize_actions(self, x, obs=None):
        """The flow's actions → env actions: un-normalised, then the state added on the
        ``relative_actions`` dims (lerobot's AbsoluteActionsProcessorStep, openpi's AbsoluteActions)."""
        actions = x * self.actions_scale + self.actions_loc
        offset = self._state_offset(obs, actions)
        if offset is None:
            return actions
        n = offset.shape[-1]
        return torch.cat([actions[..., :n] + offset, actions[..., n:]], -1)

    def prompt_tokens(self, texts, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, mask), (B, max_token_len), of each instruction with its normalised state."""
        bins = discretize_state(state[:, : self.state_dim].detach().cpu().numpy())
        ids = [self.tokenizer.ids(self.prompt_format, text, b) for text, b in zip(texts, bins, strict=True)]
        tokens, mask = self.tokenizer.pad(ids)
        return tokens.to(state.device), mask.to(state.device)

    def prompt(self, obs, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, mask) of each observation's prompt (its ``task_id``'s instruction)."""
        task = obs["task_id"].long().view(-1).clamp(0, len(self.instructions) - 1) if "task_id" in obs else None
        if task is None:
            task = torch.zeros(state.shape[0], dtype=torch.long, device=state.device)
        if self.prompt_format != "task_state":
            return self.task_tokens[task], self.task_token_mask[task]
        return self.prompt_tokens([self.instructions[i] for i in task.tolist()], state)

    def images(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, cameras, 3, S, S) in [−1, 1], mask (B, cameras)) in the model's camera
        order; an empty slot (camera key None) is black (−1) and masked out."""
        size = self.config.vision.image_size
        present = [k for k in self.camera_keys if k is not None]
        missing = [k for k in present if k not in obs]
        if missing:
            raise KeyError(
                f"The observation has no camera {missing} (it has {sorted(obs)}; cameras {self.camera_keys})."
            )
        shown = {k: resize_with_pad(torch.as_tensor(obs[k]), size) for k in present}
        like = next(iter(shown.values()))
        images = torch.stack([shown[k] if k is not None else torch.full_like(like, -1.0) for k in self.camera_keys], 1)
        mask = torch.tensor([k is not None for k in self.camera_keys], device=like.device).expand(like.shape[0], -1)
        return images, mask

    # -- FlowActionModel -------------------------------------------------------------
    def encode(self, obs) -> PiContext:
        state = self.normalize_state(obs["state"])
        return self._encode(obs, state, *self.prompt(obs, state))

    def _encode(self, obs, state, tokens, token_mask) -> PiContext:
        images, image_mask = self.images(obs)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.train_expert_only):
            cache = self.backbone.prefix(images.to(state.device), image_mask.to(state.device), tokens, token_mask)
        return PiContext(cache, state)

    @torch.no_grad()
    def predict_action_chunk(
        self,
        images: dict[str, torch.Tensor],
        state: torch.Tensor,
        instructions: Sequence[str],
        x0: torch.Tensor | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Act on raw observations as lerobot's ``predict_action_chunk`` and its processors do:
        ``images`` per camera key (:attr:`camera_keys`; (B, 3, H, W) float in [0, 1] or
        (B, H, W, 3) uint8), the raw ``state`` (B, state_dim) and one instruction per row →
        (B, chunk_size, output_action_dim) actions in env units, denoised in ``num_steps`` Euler steps
        (default :attr:`num_inference_steps`) from ``x0`` (B, chunk_size, max_action_dim)
        (default N(0, I), as lerobot and openpi; zeros: the RL policy's deterministic start). The
        RLModule acts through the same :meth:`encode` pipeline."""
        from rllib_pirl.flow import sample_chain

        device = self.action_out_proj.weight.device
        state = torch.as_tensor(state, dtype=torch.float32, device=device)
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be (B, {self.state_dim}), got {tuple(state.shape)}.")
        if len(instructions) != state.shape[0]:
            raise ValueError(f"{len(instructions)} instructions for a batch of {state.shape[0]}.")
        shape = (state.shape[0], self.horizon, self.action_dim)
        x0 = torch.randn(shape, device=device) if x0 is None else torch.as_tensor(x0, dtype=torch.float32).to(device)
        if tuple(x0.shape) != shape:
            raise ValueError(f"x0 must be {shape} (batch, chunk_size, max_action_dim), got {tuple(x0.shape)}.")
        normalized = self.normalize_state(state)
        context = self._encode(images, normalized, *self.prompt_tokens(list(instructions), normalized))
        chain = sample_chain(lambda x, t: self.velocity(context, x, t), x0, num_steps or self.num_inference_steps)
        return self.unnormalize_actions(chain.actions, {"state": state})[..., : self.output_action_dim]

    @property
    def output_action_dim(self) -> int:
        """The action dims :meth:`predict_action_chunk` returns (and an export declares)."""
        return self.env_action_dim or self.action_dim

    def _expert(self, context: PiContext, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The expert's outputs at the H action tokens, (B, H, width)."""
        c = self.config
        temb = time_embedding(t, c.expert.width, c.min_period, c.max_period).to(x_t.dtype)
        actions = self.action_in_proj(x_t)
        if c.variant == "pi0":
            at = torch.cat([actions, temb[:, None, :].expand_as(actions)], dim=-1)
            at = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(at)))
            tokens = torch.cat([self.state_proj(context.state.to(x_t.dtype))[:, None], at], dim=1)
            return self.backbone.suffix(context.cache, tokens, causal_head=1)[:, 1:]
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
        return self.backbone.suffix(context.cache, actions, cond=cond)

    def velocity(self, context, x_t, t):
        hidden = self._expert(context, x_t, t)
        return self.action_out_proj(hidden), hidden

    def value(self, context):
        if self.config.variant == "pi0":
            b = context.state.shape[0]
            p = self.action_out_proj.weight
            with torch.no_grad():
                x = torch.zeros(b, self.horizon, self.action_dim, dtype=p.dtype, device=p.device)
                features = self._expert(context, x, torch.ones(b, dtype=p.dtype, device=p.device)).mean(1)
        else:
            output, mask = context.cache.output.float(), context.cache.mask[..., None].float()
            features = ((output * mask).sum(1) / mask.sum(1).clamp(min=1)).detach()
        return self.value_head(features).squeeze(-1)

    def noise_std(self, hidden, std_range=None):
        lo, hi = std_range if std_range is not None else (self.std_min, self.std_max)
        return bounded_std(self.noise_head(hidden), lo, hi)

    def value_parameters(self):
        return self.value_head.parameters()

    def noise_parameters(self):
        return self.noise_head.parameters()
