"""π0 / π0.5 weights under the names the released files use, loading them, and export.

- **openpi** names: ``paligemma_with_expert.paligemma.model.{vision_tower.vision_model,
  multi_modal_projector, language_model}.…``, ``paligemma_with_expert.gemma_expert.model.
  {layers, norm}.…``, the word embedding as ``paligemma_with_expert.paligemma.lm_head.weight``
  (tied), and the top-level heads (π0: ``state_proj``, ``action_in_proj``,
  ``action_time_mlp_{in,out}``, ``action_out_proj``; π0.5: ``time_mlp_{in,out}`` instead of the
  state and action-time ones, and ``dense`` adaptive norms in the expert).
- **lerobot**: the same names under ``model.``. lerobot ≥ 0.5 saves the embedding twice:
  ``…language_model.embed_tokens.weight`` (the one its model embeds with and fine-tunes) and a
  stale ``…paligemma.lm_head.weight`` (no gradient reaches it): ``embed_tokens`` is loaded and
  the stale copy skipped and reported.

What a folder says besides the weights is read by :mod:`~rllib_pirl.models.pi0.formats`.
:func:`save_pretrained` writes a folder lerobot 0.6's ``from_pretrained`` accepts (its
``config.json`` fields only, every key its strict load expects, its processor files) with
this package's own settings, RL heads and tokenizer beside it; ``layout="openpi"`` writes
openpi's names and ``assets/<asset_id>/norm_stats.json`` instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch
from safetensors.torch import save_file

from rllib_pirl.models.pi0.formats import (
    ACTION_FEATURE,
    CONFIG,
    EMBED,
    IMAGE_PREFIX,
    LEROBOT_MODES,
    LM_EMBED,
    OURS,
    POSTPROCESSOR,
    PREPROCESSOR,
    RL_HEADS,
    STATE_FEATURE,
    TOKENIZER,
    WEIGHTS,
    CheckpointMismatch,
    Pretrained,
    detect_variant,
    read_norm_stats,
    read_pretrained,
    tokenizer_in,
)

LAYOUTS = ("lerobot", "openpi")
_EXPERT_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
#: (our module prefix, openpi prefix), most specific first.
_PREFIXES = (
    ("backbone.paligemma.vision_tower.", "paligemma_with_expert.paligemma.model.vision_tower.vision_model."),
    ("backbone.paligemma.", "paligemma_with_expert.paligemma.model."),
    ("backbone.gemma_expert.", "paligemma_with_expert.gemma_expert.model."),
)
#: Released keys the model does not use (skipped on load, reported).
UNUSED = (
    re.compile(r"^paligemma_with_expert\.gemma_expert\.lm_head\."),
    re.compile(r"^paligemma_with_expert\.gemma_expert\.model\.embed_tokens\."),
)
#: RLinf's πRL heads (its RL checkpoints): loaded where they fit ours, else skipped.
RL_HEAD_PREFIXES = ("value_head.", "noise_head.")


def openpi_key(key: str) -> str:
    """Our parameter name → its name in an openpi file."""
    if key == "backbone.paligemma.language_model.embed_tokens.weight":
        return EMBED
    for ours, theirs in _PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def layout_state(model) -> dict[str, torch.Tensor]:
    """The model's weights (RL heads excluded) under openpi names."""
    heads = model.rl_head_state_keys()
    return {openpi_key(k): v for k, v in model.state_dict().items() if k not in heads and "rotary" not in k}


def load_layout_state(model, tensors: dict[str, torch.Tensor], source: str, read=None) -> dict[str, str]:
    """Load lerobot- or openpi-named ``tensors`` into ``model``; returns the released keys it
    skipped, each with why (key → reason).

    ``tensors`` may be meta tensors (names and shapes) with ``read(name)`` giving each one:
    they are then read and copied into the model one at a time (converted to the parameter's
    dtype), so that a process never holds the checkpoint beside the model. RLinf's
    ``value_head.*`` / ``noise_head.*`` are loaded when their names and shapes are ours, else
    skipped (the model's own heads stay). Raises :class:`CheckpointMismatch` naming the missing
    and unexpected keys and the shapes that differ."""
    read = read or tensors.__getitem__
    origin = {k.removeprefix("model."): k for k in tensors}
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    skipped = {}
    if LM_EMBED in tensors:  # the embedding the model uses; lm_head beside it is lerobot ≥ 0.5's stale copy
        if EMBED in tensors:
            tensors.pop(EMBED)
            skipped[EMBED] = "the tied copy (stale after a lerobot ≥ 0.5 fine-tune): embed_tokens is loaded"
        tensors[EMBED], origin[EMBED] = tensors.pop(LM_EMBED), origin.pop(LM_EMBED)
    skipped.update({k: "unused by π0 / π0.5" for k in sorted(tensors) if any(p.match(k) for p in UNUSED)})
    own_heads = {k: v for k, v in model.state_dict().items() if k in model.rl_head_state_keys()}
    their_heads = {k: v for k, v in tensors.items() if k.startswith(RL_HEAD_PREFIXES)}
    fitting = []
    for prefix in RL_HEAD_PREFIXES:
        theirs = {k: tuple(v.shape) for k, v in their_heads.items() if k.startswith(prefix)}
        ours = {k: tuple(v.shape) for k, v in own_heads.items() if k.startswith(prefix)}
        if theirs and theirs == ours:
            fitting += sorted(theirs)
        elif theirs:
            skipped[prefix + "*"] = f"{len(theirs)} tensors that do not fit this model's {prefix[:-1]}: a fresh one"
    expected = layout_state(model)
    ignore = {k for k in tensors if any(p.match(k) for p in UNUSED)} | set(their_heads)
    missing = sorted(k for k in expected if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected and k not in ignore)
    shapes = {
        k: (tuple(tensors[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    }
    if missing or unexpected or shapes:
        variant, found = model.config.variant, detect_variant(tensors)
        hint = ""
        if found and found != variant:
            hint = (
                f" This is a {found} checkpoint but the model is configured as {variant}: set "
                f"pi_config.variant: {found} (π0 and π0.5 differ in the suffix and the expert's norms)."
            )
        raise CheckpointMismatch(
            f"{source} does not fit the {variant} model:{hint}\n"
            f"  missing ({len(missing)}): {_short(missing)}\n  unexpected ({len(unexpected)}): {_short(unexpected)}\n"
            f"  shapes (checkpoint, model) ({len(shapes)}): {_short([f'{k}: {v}' for k, v in shapes.items()])}"
        )
    targets = model.state_dict(keep_vars=True)
    own = {openpi_key(k): k for k in targets}
    heads = model.rl_head_state_keys()
    leftover = sorted(set(targets) - {own[k] for k in expected} - heads)
    leftover = [k for k in leftover if "rotary" not in k]
    if leftover:
        raise CheckpointMismatch(f"{source}: internal key mapping incomplete: {leftover}")
    with torch.no_grad():
        for k in [*expected, *fitting]:
            targets[own[k]].copy_(read(origin[k]))
    return skipped


def _short(items, n: int = 8) -> str:
    items = list(items)
    return "[]" if not items else ", ".join(items[:n]) + (f", … (+{len(items) - n})" if len(items) > n else "")


def read_architecture(path: str, pi_config=None):
    """A checkpoint's architecture without loading its weights (their shapes only)."""
    return read_pretrained(path, pi_config).pi_config


# -- building a policy from a checkpoint ------------------------------------------------------
def _short_camera(name: str | None) -> str | None:
    return name.removeprefix(IMAGE_PREFIX) if name else name


def resolve_policy_kwargs(
    info: Pretrained,
    requested: dict[str, Any],
    env_cameras: list[str] | None = None,
    env_state_dim: int | None = None,
    new_features: bool = False,
) -> dict[str, Any]:
    """The policy's constructor arguments: what the checkpoint fixes, then ``requested`` (the
    RL config's ``model_kwargs``). Against the env (``env_cameras``, ``env_state_dim``; None:
    no env, the checkpoint's own) a checkpoint that declares other cameras or another state
    is refused, unless ``new_features`` (SFT: the demos redefine state, cameras and statistics)."""
    redefined = ("norm_stats", "state_dim", "env_action_dim", "camera_names", "n_action_steps", "relative_actions")
    kwargs = {k: v for k, v in info.policy_kwargs.items() if not (new_features and k in redefined)}
    requested = {k: v for k, v in requested.items() if v is not None}
    cameras = requested.pop("camera_keys", None)
    kwargs.update(_normalisation(info, requested, new_features))
    kwargs.update({k: v for k, v in requested.items() if k not in ("norm_stats", "norm_modes")})
    _check_relative_preset(info, requested, new_features)
    kwargs["camera_keys"] = cameras if new_features else _cameras(info, cameras, env_cameras)
    if info.cameras and info.format == "lerobot" and not new_features:
        kwargs["camera_names"] = list(info.cameras)
    declared = None if new_features else _state_dim(info, kwargs.get("norm_stats"), env_state_dim)
    if not new_features and "state_dim" not in requested:
        kwargs["state_dim"] = declared if declared is not None else env_state_dim
    if kwargs.get("state_dim") is None:
        raise CheckpointMismatch(f"{_where(info)} does not record its state's size: pass state_dim.")
    kwargs.setdefault("tokenizer", tokenizer_in(info.folder) if info.folder else None)
    return kwargs


#: Published openpi-layout checkpoints trained with actions relative to the state, which their
#: folders do not record: (variant, the asset / repo id of their statistics) → the mask.
RELATIVE_PRESETS = {("pi0", "physical-intelligence/libero"): [True] * 6 + [False]}  # openpi pi0_libero, RLinf π0 LIBERO


def _check_relative_preset(info: Pretrained, requested: dict[str, Any], new_features: bool) -> None:
    """An openpi / RLinf folder that looks like a published relative-action checkpoint (its
    statistics' asset id) must say how its actions are meant: refused unless ``relative_actions``
    is given (``false``: absolute)."""
    if new_features or info.format not in ("openpi", "rlinf") or "relative_actions" in requested:
        return
    asset = os.path.dirname(info.stats_source).replace(os.sep, "/").removeprefix("assets/")
    mask = RELATIVE_PRESETS.get((info.pi_config.variant, asset))
    if mask is not None:
        raise CheckpointMismatch(
            f"{_where(info)} looks like openpi's pi0_libero / RLinf's π0 LIBERO (statistics of {asset}), trained "
            "with the arm's actions relative to the state (openpi's extra_delta_transform), which the folder does "
            f"not record: set model_kwargs.relative_actions: {json.dumps(mask)} (or false if it predicts absolute "
            "actions)."
        )


def _state_dim(info: Pretrained, stats, env_state_dim: int | None) -> int | None:
    """The state size the checkpoint was trained on (its features, else its statistics'), refused
    when the env's differs."""
    declared = info.policy_kwargs.get("state_dim")
    state_stats = ((stats or {}).get("state") or {}).values()
    if declared is None and state_stats:  # openpi / RLinf: the statistics' size
        declared = len(next(iter(state_stats)))
    if env_state_dim is not None and declared is not None and declared != env_state_dim:
        raise CheckpointMismatch(
            f"{_where(info)} was trained on a {declared}-D state (its input_features / statistics), the env gives "
            f"{env_state_dim} dims: this checkpoint is for another robot or observation; pick the env's matching "
            "obs_mode / control_mode, or fine-tune (rllib sft --pretrained) on this env first."
        )
    return declared


def _where(info: Pretrained) -> str:
    return info.folder or info.source


def _normalisation(info: Pretrained, requested: dict[str, Any], new_features: bool = False) -> dict[str, Any]:
    """``norm_stats`` / ``norm_modes``: the checkpoint's, or the requested ones (``norm_stats``:
    a dict, or the path of a ``norm_stats.json`` / its folder; ``norm_modes``: a dict, or one
    mode for both, e.g. ``identity``). Statistics that a normalising mode needs and that were
    not found are an error (unless ``new_features``: SFT computes them)."""
    out = {}
    stats = requested.get("norm_stats", info.policy_kwargs.get("norm_stats"))
    if isinstance(stats, str):
        stats = read_norm_stats(stats)
    modes = requested.get("norm_modes")
    if isinstance(modes, str):
        modes = {"state": modes, "actions": modes}
    modes = {**(info.policy_kwargs.get("norm_modes") or {}), **(modes or {})}
    if modes:
        out["norm_modes"] = modes
    if not new_features:
        out["norm_stats"] = stats
    normalised = [name for name in ("state", "actions") if modes.get(name, "mean_std") != "identity"]
    if new_features or not normalised or "norm_stats" in requested or info.format == "rllib_pirl":
        return out
    candidates = info.stats_candidates
    if candidates:
        raise CheckpointMismatch(
            f"{_where(info)} holds several norm_stats.json files: {[os.path.relpath(c, _where(info)) for c in candidates]}. "
            "Say which one the model was trained with: model_kwargs.norm_stats: PATH (openpi: "
            "assets/<asset_id>/norm_stats.json, the asset id of its training config)."
        )
    absent = [name for name in normalised if name not in (stats or {})]
    if absent:
        raise CheckpointMismatch(
            f"{_where(info)}: no normalisation statistics for {absent} found ({info.version}; looked for lerobot's "
            f"{PREPROCESSOR} / {POSTPROCESSOR}, openpi's assets/<asset_id>/norm_stats.json and RLinf's "
            "<repo_id>/norm_stats.json). Give them (model_kwargs.norm_stats: a norm_stats.json or its folder) "
            "or, for a model trained without normalisation, say so: model_kwargs.norm_modes: identity."
        )
    return out


def _cameras(info: Pretrained, requested: list | None, env_cameras: list[str] | None) -> list:
    """The env camera (None: an empty slot) of each of the checkpoint's camera slots, in its order."""
    slots = info.cameras
    if requested is not None:
        if slots and info.format != "rllib_pirl" and len(requested) != len(slots):
            raise CheckpointMismatch(
                f"model_kwargs.camera_keys has {len(requested)} cameras, the checkpoint {_where(info)} {len(slots)}: "
                f"{slots}. List the env camera feeding each, in that order (null for a slot to leave empty)."
            )
        return list(requested)
    if slots is None:
        if env_cameras is None:
            raise CheckpointMismatch(
                f"{_where(info)} ({info.version}) does not record its cameras: pass camera_keys in the model's order "
                "(openpi: base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb)."
            )
        return list(env_cameras)
    if env_cameras is None or info.format == "rllib_pirl":
        return list(slots)
    mapped = []
    for slot in slots:
        short = _short_camera(slot)
        if short.startswith("empty_camera"):  # lerobot's empty_cameras: black and masked out
            mapped.append(None)
        elif short in env_cameras or slot in env_cameras:
            mapped.append(short if short in env_cameras else slot)
        else:
            raise CheckpointMismatch(
                f"{_where(info)}: the checkpoint's cameras {[_short_camera(s) for s in slots]} (config.json "
                f"input_features) are not the env's {env_cameras}. Say which env camera feeds each, in the "
                f"checkpoint's order: model_kwargs.camera_keys: [{', '.join(env_cameras[: len(slots)])}] (null for a "
                "slot to leave empty)."
            )
    return mapped


def check_pretrained(
    path: str,
    model_kwargs: dict[str, Any] | None = None,
    env_cameras: list[str] | None = None,
    env_state_dim: int | None = None,
) -> Pretrained:
    """What can be checked of ``model_kwargs.pretrained`` before Ray starts, without building the
    model: the files, the format, the architecture and the statistics, and against the env's
    cameras / state size where they are known without building it. Raises :class:`CheckpointMismatch`."""
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if v is not None}
    info = read_pretrained(path, kwargs.get("pi_config"))
    stats = _normalisation(info, kwargs).get("norm_stats")
    _check_relative_preset(info, kwargs, False)
    if env_cameras:
        _cameras(info, kwargs.get("camera_keys"), env_cameras)
    _state_dim(info, stats, kwargs.get("state_dim") or env_state_dim)
    return info


def summary(info: Pretrained, model) -> str:
    """One line: what was loaded and how the policy reads observations."""
    c = model.config
    names = model.init_kwargs.get("camera_names") or [None] * len(model.camera_keys)
    cams = ", ".join(
        f"{_short_camera(n)} ← {k or 'empty'}" if n and _short_camera(n) != k else f"{k or 'empty'}"
        for n, k in zip(names, model.camera_keys, strict=True)
    )
    modes = model.norm_modes
    norm = (
        f"state {modes['state']}, actions {modes['actions']} ({model.norm_convention} ε {model.norm_eps:g}) "
        f"from {info.stats_source or 'the given statistics'}"
        if any(m != "identity" for m in modes.values())
        else "identity (none)"
    )
    executes = model.init_kwargs.get("n_action_steps")
    return (
        f"[pi0] {info.version} {c.variant} from {info.folder or info.source}: horizon {c.chunk_size}"
        + (f" (executes {executes})" if executes else "")
        + f", {model.num_inference_steps} denoising steps by default; cameras [{cams}]; state {model.state_dim} / "
        f"actions {model.output_action_dim} dims (padded {c.max_state_dim} / {c.max_action_dim}); normalisation {norm}; "
        f"prompt {model.prompt_format}"
        + (
            f"; actions relative to the state on dims {[i for i, m in enumerate(model.relative_actions) if m]}"
            if model.relative_actions
            else ""
        )
        + (
            f"; skipped {', '.join(k.removeprefix('paligemma_with_expert.') for k in model.skipped_keys)}"
            if model.skipped_keys
            else ""
        )
    )


def load_pretrained(
    path: str,
    cls=None,
    *,
    env_cameras: list[str] | None = None,
    env_state_dim: int | None = None,
    new_features: bool = False,
    verbose: bool = True,
    **kwargs,
):
    """Build ``cls`` (default :class:`PiPolicy`) from a checkpoint folder of any format
    (:mod:`~rllib_pirl.models.pi0.formats`), its weights loaded. ``kwargs`` (the RL config's
    ``model_kwargs``) override what the checkpoint stores (``pi_config``: the parts a format
    does not record, as a partial dict); ``env_cameras`` / ``env_state_dim``: the env's, to
    map cameras and refuse a checkpoint made for other features. Prints one summary line."""
    if cls is None:
        from rllib_pirl.models.pi0.policy import PiPolicy as cls
    info = read_pretrained(path, kwargs.pop("pi_config", None))
    merged = resolve_policy_kwargs(info, kwargs, env_cameras, env_state_dim, new_features)
    model = cls(pi_config=info.pi_config, **merged)
    model.skipped_keys = load_layout_state(model, info.tensors, info.source, info.read)
    if info.rl_heads is not None:
        heads = {k: v for k, v in info.rl_heads.items() if k.split(".")[0] in ("value_head", "noise_head")}
        own = model.state_dict()
        if all(k in own and own[k].shape == v.shape for k, v in heads.items()):
            model.load_state_dict(heads, strict=False)
        else:  # head sizes changed in the RL config: keep the new heads
            model.skipped_keys[RL_HEADS] = "head sizes differ from this config: fresh heads"
    if verbose:
        print(summary(info, model), flush=True)
    return model


# -- export ---------------------------------------------------------------------------------
#: lerobot 0.6's PI0Config / PI05Config fields in its order, with its defaults (None: set from the model).
_LEROBOT_FIELDS: dict[str, Any] = {
    "type": None, "n_obs_steps": 1, "input_features": None, "output_features": None, "device": "cpu",
    "use_amp": False, "use_peft": False, "push_to_hub": False, "repo_id": None, "private": None, "tags": None,
    "license": None, "pretrained_path": None, "pretrained_revision": None, "paligemma_variant": "gemma_2b",
    "action_expert_variant": "gemma_300m", "dtype": None, "chunk_size": None, "n_action_steps": None,
    "max_state_dim": None, "max_action_dim": None, "num_inference_steps": None, "time_sampling_beta_alpha": 1.5,
    "time_sampling_beta_beta": 1.0, "time_sampling_scale": 0.999, "time_sampling_offset": 0.001,
    "min_period": None, "max_period": None, "use_relative_actions": False, "relative_exclude_joints": ["gripper"],
    "action_feature_names": None, "rtc_config": None, "image_resolution": None, "empty_cameras": 0,
    "tokenizer_max_length": None, "normalization_mapping": None, "gradient_checkpointing": False,
    "compile_model": False, "compile_mode": "max-autotune", "freeze_vision_encoder": False,
    "train_expert_only": False, "optimizer_lr": 2.5e-05, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-08,
    "optimizer_weight_decay": 0.01, "optimizer_grad_clip_norm": 1.0, "scheduler_warmup_steps": 1000,
    "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-06,
}  # fmt: skip
_MODE_NAMES = {v: k for k, v in LEROBOT_MODES.items()}


def _feature(kind: str, shape) -> dict[str, Any]:
    return {"type": kind, "shape": list(shape)}


def _features(model) -> dict[str, dict[str, Any]]:
    """lerobot's features of the model: its cameras (VISUAL), state (STATE) and action (ACTION)."""
    size = model.config.vision.image_size
    features = {name: _feature("VISUAL", [3, size, size]) for name in camera_names(model)}
    features[STATE_FEATURE] = _feature("STATE", [model.state_dim])
    features[ACTION_FEATURE] = _feature("ACTION", [model.output_action_dim])
    return features


def _norm_map(model) -> dict[str, str]:
    """lerobot's ``normalization_mapping`` of the model's modes."""
    modes = model.norm_modes
    return {"VISUAL": "IDENTITY", "STATE": _MODE_NAMES[modes["state"]], "ACTION": _MODE_NAMES[modes["actions"]]}


def lerobot_config(model) -> dict[str, Any]:
    """``config.json`` for lerobot 0.6's PI0Config / PI05Config: its fields only."""
    c = model.config
    features = _features(model)
    action = features.pop(ACTION_FEATURE)
    return {
        **_LEROBOT_FIELDS,
        "type": c.variant,
        "input_features": features,
        "output_features": {ACTION_FEATURE: action},
        "dtype": model.init_kwargs.get("dtype", "float32"),
        "chunk_size": c.chunk_size,
        "n_action_steps": model.init_kwargs.get("n_action_steps") or c.chunk_size,
        "max_state_dim": c.max_state_dim,
        "max_action_dim": c.max_action_dim,
        "num_inference_steps": model.num_inference_steps,
        "min_period": c.min_period,
        "max_period": c.max_period,
        "image_resolution": [c.vision.image_size, c.vision.image_size],
        "tokenizer_max_length": c.max_token_len,
        **_relative_fields(model),
        "normalization_mapping": _norm_map(model),
    }


def _relative_fields(model) -> dict[str, Any]:
    """lerobot's fields for ``relative_actions``: dims named ``relative_i`` / ``absolute_i`` and
    ``absolute`` excluded (lerobot's rule: a dim whose name contains an excluded joint stays absolute)."""
    mask = model.relative_actions
    if mask is None:
        return {"use_relative_actions": False, "relative_exclude_joints": ["gripper"], "action_feature_names": None}
    names = [f"{'relative' if m else 'absolute'}_{i}" for i, m in enumerate(mask)]
    return {"use_relative_actions": True, "relative_exclude_joints": ["absolute"], "action_feature_names": names}


def camera_names(model) -> list[str]:
    """The lerobot feature name of each camera slot."""
    names = model.init_kwargs.get("camera_names")
    if names:
        return list(names)
    return [IMAGE_PREFIX + (k or f"empty_camera_{i}") for i, k in enumerate(model.camera_keys)]


def _stats_file(model) -> dict[str, torch.Tensor]:
    flat = {}
    for name, feature in (("state", STATE_FEATURE), ("actions", ACTION_FEATURE)):
        for stat, values in ((model.norm_stats or {}).get(name) or {}).items():
            flat[f"{feature}.{stat}"] = torch.tensor(values, dtype=torch.float32)
    for camera in camera_names(model):  # VISUAL is IDENTITY: lerobot keeps image statistics it does not apply
        flat[f"{camera}.mean"], flat[f"{camera}.std"] = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    return flat


def _processors(model) -> tuple[dict, dict]:
    """lerobot 0.6's ``policy_preprocessor.json`` / ``policy_postprocessor.json`` of this model."""
    c = model.config
    features = _features(model)
    norm_map = _norm_map(model)
    eps = model.norm_eps if model.norm_convention == "lerobot" else 1e-8
    fields = _relative_fields(model)
    relative = {
        "enabled": fields["use_relative_actions"],
        "exclude_joints": fields["relative_exclude_joints"],
        "action_names": fields["action_feature_names"],
    }
    steps = [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
    ]
    if c.variant == "pi0":
        steps.append({"registry_name": "pi0_new_line_processor", "config": {}})
    normalizer = {
        "registry_name": "normalizer_processor",
        "config": {"eps": eps, "features": features, "norm_map": norm_map},
    }
    tokenizer = {
        "registry_name": "tokenizer_processor",
        "config": {
            "max_length": c.max_token_len, "task_key": "task", "padding_side": "right", "padding": "max_length",
            "truncation": True, "tokenizer_name": "google/paligemma-3b-pt-224",
        },
    }  # fmt: skip
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    if c.variant == "pi0":
        steps += [tokenizer, device, {"registry_name": "relative_actions_processor", "config": relative}, normalizer]
    else:  # π0.5 normalises first: the prompt carries the normalised state
        steps += [
            {"registry_name": "relative_actions_processor", "config": relative},
            normalizer,
            {"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {}},
            tokenizer,
            device,
        ]
    index = next(i for i, s in enumerate(steps) if s is normalizer)
    normalizer["state_file"] = f"policy_preprocessor_step_{index}_normalizer_processor.safetensors"
    unnormalizer = {
        "registry_name": "unnormalizer_processor",
        "config": {"eps": eps, "features": {ACTION_FEATURE: features[ACTION_FEATURE]}, "norm_map": norm_map},
        "state_file": "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
    }
    absolute = {"registry_name": "absolute_actions_processor", "config": {"enabled": relative["enabled"]}}
    post = [unnormalizer, absolute, device]
    return {"name": "policy_preprocessor", "steps": steps}, {"name": "policy_postprocessor", "steps": post}


def save_pretrained(model, path: str, layout: str = "lerobot", metadata: dict | None = None) -> None:
    """Write ``model`` to the folder ``path`` (atomically). ``lerobot``: what lerobot 0.6's
    ``from_pretrained`` reads (``config.json`` with its fields only; every weight its strict load
    expects — the embedding as ``embed_tokens`` and ``lm_head``, and the expert's unused
    ``lm_head`` as zeros; the processor files with their statistics); ``openpi``: openpi's names,
    its ``config.json`` and ``assets/rllib_pirl/norm_stats.json``. Both add ``rllib_pirl.json``
    (our settings), ``rl_heads.safetensors`` and the tokenizer."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    tmp = path.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    c = model.config
    weights = {k: v.detach().cpu().contiguous() for k, v in layout_state(model).items()}
    if layout == "lerobot":
        weights[LM_EMBED] = weights[EMBED].clone()
        weights[_EXPERT_HEAD] = torch.zeros(c.vocab_size, c.expert.width, dtype=weights[EMBED].dtype)
    prefix = "model." if layout == "lerobot" else ""
    save_file({prefix + k: v for k, v in weights.items()}, os.path.join(tmp, WEIGHTS))
    head_keys = model.rl_head_state_keys()
    heads = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in head_keys}
    save_file(heads, os.path.join(tmp, RL_HEADS))
    shutil.copyfile(model.tokenizer.path, os.path.join(tmp, TOKENIZER))
    from rllib_pirl import __version__

    kwargs = {k: v for k, v in model.init_kwargs.items() if k not in ("pi_config", "tokenizer", "norm_stats")}
    ours = {
        "version": __version__,
        "model_class": f"{type(model).__module__}:{type(model).__name__}",
        "pi_config": c.to_dict(),
        "norm_stats": model.norm_stats,
        "policy_kwargs": kwargs,
        "metadata": metadata or {},
    }
    _write_json(os.path.join(tmp, OURS), ours)
    if layout == "lerobot":
        _write_json(os.path.join(tmp, CONFIG), lerobot_config(model))
        pre, post = _processors(model)
        stats = _stats_file(model)
        for name, processor in ((PREPROCESSOR, pre), (POSTPROCESSOR, post)):
            _write_json(os.path.join(tmp, name), processor)
            for step in processor["steps"]:
                if "state_file" in step:
                    save_file(stats, os.path.join(tmp, step["state_file"]))
    else:
        openpi = {
            "action_dim": c.max_action_dim,
            "action_horizon": c.chunk_size,
            "paligemma_variant": "gemma_2b",
            "action_expert_variant": "gemma_300m",
            "precision": model.init_kwargs.get("dtype", "float32"),
        }
        _write_json(os.path.join(tmp, CONFIG), openpi)
        if model.norm_stats:
            os.makedirs(os.path.join(tmp, "assets", "rllib_pirl"))
            _write_json(os.path.join(tmp, "assets", "rllib_pirl", "norm_stats.json"), {"norm_stats": model.norm_stats})
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


__all__ = [
    "CheckpointMismatch",
    "layout_state",
    "load_layout_state",
    "load_pretrained",
    "read_architecture",
    "read_pretrained",
    "save_pretrained",
]
