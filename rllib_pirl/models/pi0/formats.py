"""The π0 / π0.5 checkpoint folders users have, read into one description (:class:`Pretrained`).

=============  ==============================  ==========================================  ==========================
format         weights (``model.safetensors``)  architecture and policy settings            statistics
=============  ==============================  ==========================================  ==========================
lerobot 0.4+   openpi names under ``model.``    ``config.json`` (``type`` pi0 / pi05,       the normaliser named in
               (0.5+: ``embed_tokens`` beside    ``chunk_size``, ``n_action_steps``,          ``policy_preprocessor.json``
               a stale tied ``lm_head``)         ``input_features`` / ``output_features``,    (state) and the
                                                ``normalization_mapping``, …) + shapes      un-normaliser named in
                                                                                            ``policy_postprocessor.json``
                                                                                            (actions), lerobot's ε
openpi         openpi names                     ``config.json`` {``action_dim``,             ``assets/<asset_id>/
(PyTorch)                                       ``action_horizon``, ``paligemma_variant``,   norm_stats.json`` (asset_id
                                                ``action_expert_variant``, ``precision``}    usually the dataset's repo
                                                + shapes                                     id, two folders deep)
RLinf πRL      openpi names (RL checkpoints     as openpi                                   ``<repo_id>/norm_stats.json``
               add ``value_head.*`` /                                                       in the checkpoint folder
               ``noise_head.*``)
rllib_pirl     lerobot's                        ``rllib_pirl.json`` beside lerobot's files  lerobot's processor files
=============  ==============================  ==========================================  ==========================

Everything a format says about the policy is read (cameras in order, state / action dims,
horizon and executed chunk, normalisation modes and ε, prompt format, denoising steps, actions
relative to the state); what it says that this package cannot honour is refused with the reason
(:class:`CheckpointMismatch`), and what it does not say and cannot be guessed is asked for
(openpi's cameras, openpi's ``discrete_state_input``: ``prompt_format``). Statistics that
cannot be found are an error, never identity: ``norm_modes: identity`` says so explicitly.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from rllib_pirl.models.pi0.config import GEMMA_SIZES, GemmaSize, PiConfig, VisionSize
from rllib_pirl.models.pi0.inputs import NORM_CONVENTIONS

WEIGHTS, CONFIG, OURS, RL_HEADS, TOKENIZER = (
    "model.safetensors",
    "config.json",
    "rllib_pirl.json",
    "rl_heads.safetensors",
    "tokenizer.model",
)
PREPROCESSOR, POSTPROCESSOR = "policy_preprocessor.json", "policy_postprocessor.json"
IMAGE_PREFIX = "observation.images."
STATE_FEATURE, ACTION_FEATURE = "observation.state", "action"
#: lerobot's NormalizationMode → ours
LEROBOT_MODES = {
    "IDENTITY": "identity",
    "MEAN_STD": "mean_std",
    "MIN_MAX": "min_max",
    "QUANTILES": "quantile",
    "QUANTILE10": "quantile10",
}
#: lerobot PI0Config / PI05Config fields that do not change what the policy outputs for an
#: observation (training, hub, device and compile settings), so loading ignores them.
LEROBOT_IGNORED = {
    "type", "n_obs_steps", "device", "use_amp", "use_peft", "push_to_hub", "repo_id", "private", "tags",
    "license", "pretrained_path", "pretrained_revision", "dtype", "time_sampling_beta_alpha",
    "time_sampling_beta_beta", "time_sampling_scale", "time_sampling_offset", "rtc_config",
    "gradient_checkpointing", "compile_model", "compile_mode", "freeze_vision_encoder", "train_expert_only",
    "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "optimizer_grad_clip_norm",
    "scheduler_warmup_steps", "scheduler_decay_steps", "scheduler_decay_lr",
}  # fmt: skip
#: lerobot fields this module reads.
LEROBOT_READ = {
    "input_features", "output_features", "paligemma_variant", "action_expert_variant", "chunk_size",
    "n_action_steps", "max_state_dim", "max_action_dim", "num_inference_steps", "min_period", "max_period",
    "use_relative_actions", "relative_exclude_joints", "action_feature_names", "image_resolution",
    "empty_cameras", "normalization_mapping", "tokenizer_max_length",
}  # fmt: skip
OPENPI_FIELDS = {"action_dim", "action_horizon", "paligemma_variant", "action_expert_variant", "precision"}
#: openpi's name of the (tied) word embedding, and the one lerobot ≥ 0.5 embeds with beside it
EMBED = "paligemma_with_expert.paligemma.lm_head.weight"
LM_EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model or the env, or that says something this
    package cannot honour: names the file, the field and the fix."""


@dataclass
class Pretrained:
    """What a checkpoint folder holds, in this package's terms."""

    source: str  # the weights file
    folder: str
    format: str  # lerobot | openpi | rlinf | rllib_pirl | weights (a lone file)
    version: str  # e.g. "lerobot 0.5+"
    tensors: dict[str, torch.Tensor]  # meta tensors: names and shapes
    read: Callable[[str], torch.Tensor]
    pi_config: PiConfig
    #: what the checkpoint fixes of the policy's constructor arguments
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the checkpoint's camera slots in order (None: the format does not record them)
    cameras: list[str] | None = None
    stats_source: str = ""
    rl_heads: dict[str, torch.Tensor] | None = None
    #: several statistics files and none chosen (openpi / RLinf folders): the choice is the user's
    stats_candidates: list[str] = field(default_factory=list)

    @property
    def layout(self) -> str:
        return "lerobot" if any(k.startswith("model.paligemma_with_expert.") for k in self.tensors) else "openpi"


# -- the files ---------------------------------------------------------------------------
def _json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointMismatch(f"{path} is not valid JSON ({e}): a truncated or edited file?") from None


def _open_weights(path: str):
    try:
        return safe_open(path, "pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointMismatch(
            f"{path} cannot be read as safetensors ({e}): a truncated or partial download? Download it again."
        ) from None


def weight_shapes(handle) -> dict[str, torch.Tensor]:
    """The tensors of an open ``.safetensors`` file as meta tensors: names and shapes, nothing read."""
    return {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}  # noqa: SIM118


def _locate(path: str) -> tuple[str, str]:
    """(folder, weights file) of a checkpoint folder or a lone weights file."""
    if os.path.isdir(path):
        weights = os.path.join(path, WEIGHTS)
        if not os.path.isfile(weights):
            present = sorted(os.listdir(path))[:12]
            raise FileNotFoundError(
                f"No π0 / π0.5 weights at {path!r}: expected {WEIGHTS} (a lerobot, openpi, RLinf or rllib_pirl "
                f"checkpoint folder); the folder holds {present}."
            )
        return path, weights
    if os.path.isfile(path):
        return os.path.dirname(path), path
    raise FileNotFoundError(
        f"No π0 / π0.5 weights at {path!r} (expected a folder with {WEIGHTS}: a lerobot checkpoint such as "
        "pi0_base / pi05_base, an openpi PyTorch checkpoint, an RLinf πRL checkpoint, or one written by rllib_pirl)."
    )


def detect_variant(keys) -> str | None:
    """ "pi0" / "pi05" from the weights' names (None when neither head set is there)."""
    keys = [k.removeprefix("model.") for k in keys]
    if any(k.startswith(("state_proj.", "action_time_mlp_in.")) for k in keys):
        return "pi0"
    if any(k.startswith("time_mlp_in.") for k in keys) or any(".dense." in k for k in keys):
        return "pi05"
    return None


def read_pretrained(path: str, pi_config: dict[str, Any] | PiConfig | None = None) -> Pretrained:
    """Read a checkpoint folder (or a lone ``model.safetensors``): its format, architecture
    (``pi_config`` overrides the parts a format does not record, e.g. lerobot's SigLIP head
    count: ``{"vision": {"num_heads": 2}}``), statistics and policy settings. Nothing of the
    weights is read but their names and shapes."""
    folder, weights = _locate(path)
    config_path = os.path.join(folder, CONFIG)
    config = _json(config_path) if os.path.isfile(config_path) else None
    handle = _open_weights(weights)
    tensors = weight_shapes(handle)
    if os.path.isfile(os.path.join(folder, OURS)) or (config and "rllib_pirl" in config):
        reader = _read_ours
    elif config is None and os.path.isdir(path):
        raise CheckpointMismatch(
            f"{folder} has {WEIGHTS} but no {CONFIG}: a partial download? lerobot folders hold {CONFIG}, "
            f"{PREPROCESSOR} and {POSTPROCESSOR} with their safetensors; openpi / RLinf folders {CONFIG} and "
            "norm_stats.json (under assets/<asset_id>/ or <repo_id>/). Download the whole folder, or point at the "
            f"{WEIGHTS} file itself to load bare weights (then give model_kwargs.norm_stats or norm_modes: identity)."
        )
    elif config is None:
        reader = _read_bare
    elif "type" in config:
        if config["type"] not in ("pi0", "pi05"):
            raise CheckpointMismatch(
                f"{config_path}: type {config['type']!r} is a lerobot policy that is not π0 / π0.5 (pi0, pi05)."
            )
        reader = _read_lerobot
    elif set(config) & OPENPI_FIELDS:
        reader = _read_openpi
    else:
        raise CheckpointMismatch(
            f"{config_path} is neither lerobot's (no 'type') nor openpi's ({sorted(OPENPI_FIELDS)}) nor rllib_pirl's: "
            f"unknown checkpoint format (keys {sorted(config)[:10]})."
        )
    try:
        info = reader(folder, weights, config, tensors, handle.get_tensor)
    except CheckpointMismatch as e:
        if folder in str(e):
            raise
        raise CheckpointMismatch(f"{folder or weights}: {e}") from None
    info.pi_config = _override(info.pi_config, pi_config)
    _check_variant(info)
    return info


def _override(config: PiConfig, requested) -> PiConfig:
    """``config`` with the fields of ``requested`` (a PiConfig or a partial dict) replaced."""
    if requested is None:
        return config
    if isinstance(requested, PiConfig):
        return requested
    data = config.to_dict()
    for key, value in requested.items():
        if key not in data:
            raise CheckpointMismatch(f"pi_config.{key} is not a π0 / π0.5 setting (known: {sorted(data)}).")
        data[key] = {**data[key], **value} if isinstance(data[key], dict) and isinstance(value, dict) else value
    return PiConfig.from_dict(data)


def _check_variant(info: Pretrained) -> None:
    found = detect_variant(info.tensors)
    if found and found != info.pi_config.variant:
        raise CheckpointMismatch(
            f"{info.source} is a {found} checkpoint but pi_config.variant is {info.pi_config.variant}: set variant: "
            f"{found} (π0 and π0.5 differ in the suffix and the expert's norms)."
        )


def _head_counts(config: dict[str, Any]) -> dict[str, int]:
    return {
        name: GEMMA_SIZES[config[key]].num_heads
        for name, key in (("vlm", "paligemma_variant"), ("expert", "action_expert_variant"))
        if config.get(key) in GEMMA_SIZES
    }


def _gemma_size_from(t: dict[str, torch.Tensor], prefix: str, num_heads: int) -> GemmaSize:
    depth = len({m.group(1) for k in t if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))})
    q = t[f"{prefix}layers.0.self_attn.q_proj.weight"]
    k = t[f"{prefix}layers.0.self_attn.k_proj.weight"]
    head_dim = q.shape[0] // num_heads
    mlp = t[f"{prefix}layers.0.mlp.gate_proj.weight"].shape[0]
    return GemmaSize(q.shape[1], depth, mlp, num_heads, k.shape[0] // head_dim, head_dim)


def infer_pi_config(tensors: dict[str, torch.Tensor], variant: str | None = None, **fields) -> PiConfig:
    """Architecture from the weights' shapes; ``fields`` are what the format records
    (``chunk_size``, ``max_token_len``, ``min_period`` …, ``heads``: {"vlm": n, "expert": n};
    head counts default to openpi's 8 per Gemma and So400m's 16 for SigLIP)."""
    t = {k.removeprefix("model."): v for k, v in tensors.items()}
    found = detect_variant(t)
    if variant and found and variant != found:
        raise CheckpointMismatch(
            f"the weights are a {found} checkpoint but its config says {variant} (config.json 'type'): the config "
            "does not belong to these weights."
        )
    variant = variant or found
    if variant not in ("pi0", "pi05"):
        raise CheckpointMismatch("Cannot tell whether this is a π0 or a π0.5 checkpoint (no state_proj / time_mlp).")
    lm = "paligemma_with_expert.paligemma.model.language_model."
    vt = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
    needed = (
        f"{lm}layers.0.self_attn.q_proj.weight",
        f"{vt}embeddings.patch_embedding.weight",
        "action_in_proj.weight",
    )
    missing = [k for k in needed if k not in t]
    if missing:
        raise CheckpointMismatch(f"Not a π0 / π0.5 checkpoint in the lerobot or openpi layout: no {missing}.")
    patch = t[f"{vt}embeddings.patch_embedding.weight"]
    heads = fields.pop("heads", {})
    vision = VisionSize(
        width=patch.shape[0],
        depth=len({m.group(1) for k in t if (m := re.match(re.escape(vt) + r"encoder\.layers\.(\d+)\.", k))}),
        mlp_dim=t[f"{vt}encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_heads=16 if patch.shape[0] % 16 == 0 else 1,
        patch_size=patch.shape[-1],
        image_size=round(t[f"{vt}embeddings.position_embedding.weight"].shape[0] ** 0.5) * patch.shape[-1],
    )
    embed = t.get(LM_EMBED, t.get(EMBED))
    if variant == "pi0":
        fields["max_state_dim"] = t["state_proj.weight"].shape[1]
    fields.setdefault("max_token_len", 200 if variant == "pi05" else 48)
    return PiConfig(
        variant=variant,
        vlm=_gemma_size_from(t, lm, heads.get("vlm", 8)),
        expert=_gemma_size_from(t, "paligemma_with_expert.gemma_expert.model.", heads.get("expert", 8)),
        vision=vision,
        vocab_size=embed.shape[0],
        max_action_dim=t["action_in_proj.weight"].shape[1],
        **{k: v for k, v in fields.items() if v is not None},
    )


# -- lerobot -----------------------------------------------------------------------------
def _processor_step(folder: str, name: str, registry: str) -> dict[str, Any] | None:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    for step in _json(path).get("steps", []):
        if step.get("registry_name") == registry:
            return step
    return None


def _lerobot_stats(folder: str, step: dict[str, Any] | None, feature: str) -> dict[str, list[float]] | None:
    """The statistics of ``feature`` in a lerobot (un)normaliser step's state file."""
    if not step or not step.get("state_file"):
        return None
    path = os.path.join(folder, step["state_file"])
    if not os.path.isfile(path):
        raise CheckpointMismatch(f"{folder}: the processor names {step['state_file']}, which is missing: download it.")
    flat = load_file(path)
    entry = {k[len(feature) + 1 :]: v.flatten().tolist() for k, v in flat.items() if k.startswith(feature + ".")}
    return {k: v for k, v in entry.items() if "." not in k} or None


def _lerobot_mode(config_path: str, norm_map: dict[str, str], kind: str) -> str:
    value = norm_map.get(kind, "IDENTITY")
    if value not in LEROBOT_MODES:
        raise CheckpointMismatch(
            f"{config_path}: normalization_mapping.{kind} = {value!r} is not one of lerobot's modes {list(LEROBOT_MODES)}."
        )
    return LEROBOT_MODES[value]


def _read_lerobot(folder, weights, config, tensors, read) -> Pretrained:
    path = os.path.join(folder, CONFIG)
    unknown = {k: v for k, v in config.items() if k not in LEROBOT_IGNORED | LEROBOT_READ and v}
    if unknown:
        raise CheckpointMismatch(
            f"{path}: {sorted(unknown)} = {list(unknown.values())} — fields this package does not know (a lerobot "
            "newer than 0.6?) that may change the policy's actions. If they do not, remove them from config.json."
        )
    features = config.get("input_features") or {}
    cameras = [k for k, v in features.items() if v.get("type") == "VISUAL"]
    state = [v["shape"] for v in features.values() if v.get("type") == "STATE"]
    actions = [v["shape"] for k, v in (config.get("output_features") or {}).items() if v.get("type") == "ACTION"]
    pre = _processor_step(folder, PREPROCESSOR, "normalizer_processor")
    post = _processor_step(folder, POSTPROCESSOR, "unnormalizer_processor")
    relative = (_processor_step(folder, PREPROCESSOR, "relative_actions_processor") or {}).get("config")
    if relative is None:  # older processors: config.json's fields
        relative = {
            "enabled": config.get("use_relative_actions", False),
            "exclude_joints": config.get("relative_exclude_joints") or [],
            "action_names": config.get("action_feature_names"),
        }
    if pre is None and post is None:
        raise CheckpointMismatch(
            f"{folder} has no {PREPROCESSOR} / {POSTPROCESSOR} with a normaliser: lerobot ≥ 0.4 writes them beside "
            f"{CONFIG} (an older lerobot, or a partial download?). Give the statistics (model_kwargs.norm_stats: "
            "a norm_stats.json) or, for a model trained without normalisation, model_kwargs.norm_modes: identity."
        )
    step_config = (pre or post)["config"]
    norm_map = step_config.get("norm_map") or config.get("normalization_mapping") or {}
    if norm_map.get("VISUAL", "IDENTITY") != "IDENTITY":
        raise CheckpointMismatch(
            f"{folder}: VISUAL normalisation {norm_map['VISUAL']} is not supported (π0: IDENTITY)."
        )
    modes = {"state": _lerobot_mode(path, norm_map, "STATE"), "actions": _lerobot_mode(path, norm_map, "ACTION")}
    stats, sources = {}, []
    for name, feature, step in (("state", STATE_FEATURE, pre or post), ("actions", ACTION_FEATURE, post or pre)):
        entry = _lerobot_stats(folder, step, feature)
        if entry is not None:
            stats[name] = entry
            sources.append(f"{name}: {step['state_file']}")
        elif modes[name] != "identity":  # lerobot leaves a feature without statistics as it is
            modes[name] = "identity"
            sources.append(f"{name}: none in the processor (identity, as lerobot)")
    tokenizer = _processor_step(folder, PREPROCESSOR, "tokenizer_processor")
    max_len = (tokenizer or {}).get("config", {}).get("max_length") or config.get("tokenizer_max_length")
    pi_config = infer_pi_config(
        tensors,
        config["type"],
        heads=_head_counts(config),
        chunk_size=config.get("chunk_size"),
        max_token_len=max_len,
        min_period=config.get("min_period"),
        max_period=config.get("max_period"),
        **({"max_state_dim": config["max_state_dim"]} if config.get("max_state_dim") else {}),
    )
    resolution = config.get("image_resolution")
    if resolution and tuple(resolution) != (pi_config.vision.image_size,) * 2:
        raise CheckpointMismatch(
            f"{path}: image_resolution {resolution} disagrees with the weights' SigLIP ({pi_config.vision.image_size} px)."
        )
    both = {"model." + EMBED, "model." + LM_EMBED} <= set(tensors)
    kwargs = {
        "norm_stats": stats or None,
        "norm_modes": modes,
        "norm_convention": "lerobot",
        "norm_eps": float(step_config.get("eps", NORM_CONVENTIONS["lerobot"])),
        "prompt_format": "task_lerobot" if config["type"] == "pi0" else "task_state",
        "num_inference_steps": int(config.get("num_inference_steps", 10)),
        "n_action_steps": config.get("n_action_steps"),
    }
    if state:
        kwargs["state_dim"] = int(state[0][-1])
    if actions:
        kwargs["env_action_dim"] = int(actions[0][-1])
    if relative.get("enabled"):
        if not actions:
            raise CheckpointMismatch(f"{path}: relative actions without an ACTION output feature to size them.")
        kwargs["relative_actions"] = relative_action_mask(
            int(actions[0][-1]), relative.get("exclude_joints"), relative.get("action_names")
        )
    return Pretrained(
        source=weights,
        folder=folder,
        format="lerobot",
        version="lerobot 0.5+ (embed_tokens and a stale lm_head)" if both else "lerobot 0.4 / hub base (tied lm_head)",
        tensors=tensors,
        read=read,
        pi_config=pi_config,
        policy_kwargs=kwargs,
        cameras=cameras or None,
        stats_source="; ".join(sources),
    )


def relative_action_mask(action_dim: int, exclude_joints=None, action_names=None) -> list[bool]:
    """lerobot's rule for which action dims are relative to the state: all of them, but those
    whose name (``action_feature_names``) contains one of ``relative_exclude_joints``
    (case-insensitive; e.g. the gripper); without names, all."""
    tokens = [str(t).lower() for t in (exclude_joints or []) if t]
    if not tokens or action_names is None:
        return [True] * action_dim
    mask = [not any(t in str(name).lower() for t in tokens) for name in list(action_names)[:action_dim]]
    return mask + [True] * (action_dim - len(mask))


# -- openpi and RLinf ----------------------------------------------------------------------
def find_norm_stats(folder: str) -> list[str]:
    """Every ``norm_stats.json`` below ``folder`` (openpi: ``assets/<asset_id>/``, with
    asset ids such as ``physical-intelligence/libero`` two folders deep; RLinf:
    ``<repo_id>/``)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if "norm_stats.json" in files:
            found.append(os.path.join(root, "norm_stats.json"))
    return sorted(found)


def read_norm_stats(path: str) -> dict[str, dict[str, list[float]]]:
    """openpi's ``norm_stats.json`` (``{"norm_stats": {"state": {...}, "actions": {...}}}``), or a
    folder holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, "norm_stats.json")
    if not os.path.isfile(path):
        raise CheckpointMismatch(f"norm_stats: {path} does not exist (an openpi norm_stats.json or its folder).")
    data = _json(path)
    stats = {k: v for k, v in data.get("norm_stats", data).items() if k in ("state", "actions")}
    if not stats:
        raise CheckpointMismatch(f"{path} holds no 'state' / 'actions' statistics (keys {sorted(data)}).")
    for name, entry in stats.items():
        stats[name] = {k: v for k, v in entry.items() if v is not None}
    return stats


def _read_openpi(folder, weights, config, tensors, read) -> Pretrained:
    path = os.path.join(folder, CONFIG)
    pi_config = infer_pi_config(tensors, heads=_head_counts(config), chunk_size=config.get("action_horizon"))
    if config.get("action_dim") and config["action_dim"] != pi_config.max_action_dim:
        raise CheckpointMismatch(
            f"{path}: action_dim {config['action_dim']} disagrees with the weights' {pi_config.max_action_dim}."
        )
    files = find_norm_stats(folder)
    under_assets = bool(files) and all(os.sep + "assets" + os.sep in f for f in files)
    kind = "openpi" if under_assets or not files else "rlinf"
    modes = {"state": "quantile", "actions": "quantile"} if pi_config.variant == "pi05" else {}
    kwargs: dict[str, Any] = {
        "norm_modes": {"state": "mean_std", "actions": "mean_std", **modes},
        "norm_convention": "openpi",
        "prompt_format": {True: "task_state", False: "task"}.get(
            config.get("discrete_state_input"), "task_state" if pi_config.variant == "pi05" else "task"
        ),
        "num_inference_steps": 10,
    }
    source = ""
    if len(files) == 1:
        stats = read_norm_stats(files[0])
        kwargs["norm_stats"] = stats
        source = os.path.relpath(files[0], folder)
    return Pretrained(
        source=weights,
        folder=folder,
        format=kind,
        version="openpi PyTorch" if kind == "openpi" else "RLinf πRL (openpi names)",
        tensors=tensors,
        read=read,
        pi_config=pi_config,
        policy_kwargs=kwargs,
        stats_source=source,
        stats_candidates=files if len(files) > 1 else [],
    )


def _read_bare(folder, weights, config, tensors, read) -> Pretrained:
    pi_config = infer_pi_config(tensors)
    modes = {"state": "quantile", "actions": "quantile"} if pi_config.variant == "pi05" else {}
    return Pretrained(
        source=weights,
        folder=folder,
        format="weights",
        version="bare weights file",
        tensors=tensors,
        read=read,
        pi_config=pi_config,
        policy_kwargs={"norm_modes": {"state": "mean_std", "actions": "mean_std", **modes}},
    )


# -- ours ----------------------------------------------------------------------------------
def _read_ours(folder, weights, config, tensors, read) -> Pretrained:
    ours_path = os.path.join(folder, OURS)
    ours = _json(ours_path) if os.path.isfile(ours_path) else config["rllib_pirl"]  # older folders: in config.json
    kwargs = copy.deepcopy(ours.get("policy_kwargs", {}))
    for key in ("norm_modes", "norm_stats"):
        if key in ours:
            kwargs[key] = ours[key]
    pre = _processor_step(folder, PREPROCESSOR, "normalizer_processor")
    stats, source = kwargs.get("norm_stats"), OURS
    if stats is None:  # statistics in lerobot's processor files (or, older folders, our own file)
        legacy = os.path.join(folder, "policy_preprocessor_step_0_normalizer_processor.safetensors")
        step = pre or ({"state_file": os.path.basename(legacy)} if os.path.isfile(legacy) else None)
        post = _processor_step(folder, POSTPROCESSOR, "unnormalizer_processor") or step
        stats = {
            name: entry
            for name, feature, s in (("state", STATE_FEATURE, step), ("actions", ACTION_FEATURE, post))
            if (entry := _lerobot_stats(folder, s, feature)) is not None
        } or None
        source = step["state_file"] if step else "none"
    kwargs["norm_stats"] = stats
    heads = os.path.join(folder, RL_HEADS)
    cameras = kwargs.get("camera_keys")
    return Pretrained(
        source=weights,
        folder=folder,
        format="rllib_pirl",
        version=f"rllib_pirl {ours.get('version', '')}".strip(),
        tensors=tensors,
        read=read,
        pi_config=PiConfig.from_dict(ours["pi_config"]),
        policy_kwargs=kwargs,
        cameras=list(cameras) if cameras else None,
        stats_source=source,
        rl_heads=load_file(heads) if os.path.isfile(heads) else None,
    )


def tokenizer_in(folder: str) -> str | None:
    """A SentencePiece model shipped in the folder (ours, openpi's assets), if any."""
    for name in (TOKENIZER, "paligemma_tokenizer.model"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None
