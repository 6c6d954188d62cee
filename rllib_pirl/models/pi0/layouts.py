"""π0 / π0.5 checkpoints users already have: lerobot and openpi (PyTorch) layouts.

- **openpi** ``model.safetensors``: ``paligemma_with_expert.paligemma.model.{vision_tower.
  vision_model, multi_modal_projector, language_model}.…``, ``paligemma_with_expert.
  gemma_expert.model.{layers, norm}.…``, the word embedding stored as
  ``paligemma_with_expert.paligemma.lm_head.weight`` (tied), and the top-level heads
  (π0: ``state_proj``, ``action_in_proj``, ``action_time_mlp_{in,out}``,
  ``action_out_proj``; π0.5: ``time_mlp_{in,out}`` instead of the state and
  action-time ones, and ``dense`` adaptive norms in the expert). Statistics:
  ``assets/*/norm_stats.json`` (``{"norm_stats": {"state": {...}, "actions": {...}}}``).
- **lerobot**: the same keys under ``model.``, ``config.json`` (``type``: ``pi0`` /
  ``pi05``, ``chunk_size``, ``max_state_dim``, …) and the statistics in
  ``policy_preprocessor_step_*_normalizer_processor.safetensors``
  (``observation.state.mean``, ``action.q01``, …).

Keys that exist in released files but that the model does not use
(the expert's ``lm_head``: the expert never emits tokens) are skipped and reported.
:func:`save_pretrained` writes the lerobot layout (plus our RL heads in their own
file ``rl_heads.safetensors``, the tokenizer and ``config.json`` with both lerobot's
fields and ours), so a fine-tuned model reloads here and in lerobot-style loaders.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rllib_pirl.models.pi0.config import GEMMA_SIZES, GemmaSize, PiConfig, VisionSize

WEIGHTS, CONFIG, RL_HEADS, TOKENIZER = "model.safetensors", "config.json", "rl_heads.safetensors", "tokenizer.model"
STATS = "policy_preprocessor_step_0_normalizer_processor.safetensors"
LAYOUTS = ("lerobot", "openpi")
_EMBED = "paligemma_with_expert.paligemma.lm_head.weight"
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
_STAT_NAMES = {"state": "observation.state", "actions": "action"}
_LEROBOT_MODES = {"MEAN_STD": "mean_std", "QUANTILES": "quantile", "IDENTITY": "identity", "QUANTILE10": "quantile"}


def openpi_key(key: str) -> str:
    """Our parameter name → its name in an openpi file."""
    if key == "backbone.paligemma.language_model.embed_tokens.weight":
        return _EMBED
    for ours, theirs in _PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def layout_state(model) -> dict[str, torch.Tensor]:
    """The model's weights (RL heads excluded) under openpi names."""
    heads = model.rl_head_state_keys()
    return {openpi_key(k): v for k, v in model.state_dict().items() if k not in heads and "rotary" not in k}


def detect_layout(keys) -> str:
    return "lerobot" if any(k.startswith("model.paligemma_with_expert.") for k in keys) else "openpi"


def detect_variant(keys) -> str | None:
    """ "pi0" / "pi05" from the weights' names (None when neither head set is there)."""
    keys = [k.removeprefix("model.") for k in keys]
    if any(k.startswith(("state_proj.", "action_time_mlp_in.")) for k in keys):
        return "pi0"
    if any(k.startswith("time_mlp_in.") for k in keys) or any(".dense." in k for k in keys):
        return "pi05"
    return None


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model: lists every difference."""


def load_layout_state(model, tensors: dict[str, torch.Tensor], source: str, read=None) -> list[str]:
    """Load lerobot- or openpi-layout ``tensors`` into ``model`` (RL heads untouched).

    ``tensors`` may be meta tensors (names and shapes) with ``read(name)`` giving each one:
    they are then read and copied into the model one at a time (converted to the parameter's
    dtype), so that a process never holds the checkpoint beside the model.
    Raises :class:`CheckpointMismatch` naming the missing and unexpected keys and
    the shapes that differ; returns the released-but-unused keys it skipped."""
    read = read or tensors.__getitem__
    origin = {k.removeprefix("model."): k for k in tensors}
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    lm_embed = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    if lm_embed in tensors and _EMBED not in tensors:
        tensors[_EMBED], origin[_EMBED] = tensors.pop(lm_embed), origin.pop(lm_embed)
    skipped = sorted(k for k in tensors if any(p.match(k) for p in UNUSED))
    expected = layout_state(model)
    missing = sorted(k for k in expected if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected and k not in skipped)
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
        for k in expected:
            targets[own[k]].copy_(read(origin[k]))
    return skipped


def _short(items, n: int = 8) -> str:
    items = list(items)
    return "[]" if not items else ", ".join(items[:n]) + (f", … (+{len(items) - n})" if len(items) > n else "")


# -- reading a checkpoint folder ---------------------------------------------------------
def _gemma_size_from(tensors: dict[str, torch.Tensor], prefix: str, num_heads: int) -> GemmaSize:
    depth = len({m.group(1) for k in tensors if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))})
    q = tensors[f"{prefix}layers.0.self_attn.q_proj.weight"]
    k = tensors[f"{prefix}layers.0.self_attn.k_proj.weight"]
    head_dim = q.shape[0] // num_heads
    mlp = tensors[f"{prefix}layers.0.mlp.gate_proj.weight"].shape[0]
    return GemmaSize(q.shape[1], depth, mlp, num_heads, k.shape[0] // head_dim, head_dim)


def infer_pi_config(tensors: dict[str, torch.Tensor], hints: dict[str, Any]) -> PiConfig:
    """Architecture from the weights' shapes (head counts: openpi's 8 / 16 unless
    ``hints`` say otherwise) and lerobot's config fields."""
    t = {k.removeprefix("model."): v for k, v in tensors.items()}
    variant = hints.get("type") or detect_variant(t)
    if variant not in ("pi0", "pi05"):
        raise CheckpointMismatch(
            f"Cannot tell whether this is a π0 or a π0.5 checkpoint (config type {hints.get('type')!r}, "
            "no state_proj / time_mlp weights)."
        )
    lm = "paligemma_with_expert.paligemma.model.language_model."
    vt = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
    missing = [
        k for k in (f"{lm}layers.0.self_attn.q_proj.weight", f"{vt}embeddings.patch_embedding.weight") if k not in t
    ]
    if missing:
        raise CheckpointMismatch(f"Not a π0 / π0.5 checkpoint in the lerobot or openpi layout: no {missing}.")
    patch = t[f"{vt}embeddings.patch_embedding.weight"]
    width = patch.shape[0]
    vision = VisionSize(
        width=width,
        depth=len({m.group(1) for k in t if (m := re.match(re.escape(vt) + r"encoder\.layers\.(\d+)\.", k))}),
        mlp_dim=t[f"{vt}encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_heads=int(hints.get("vision_num_heads", 16 if width % 16 == 0 else 1)),
        patch_size=patch.shape[-1],
        image_size=round(t[f"{vt}embeddings.position_embedding.weight"].shape[0] ** 0.5) * patch.shape[-1],
    )
    heads = int(hints.get("num_heads", 8))
    embed = t.get(_EMBED, t.get(f"{lm}embed_tokens.weight"))
    action_dim = t["action_in_proj.weight"].shape[1]
    return PiConfig(
        variant=variant,
        vlm=_gemma_size_from(t, lm, heads),
        expert=_gemma_size_from(t, "paligemma_with_expert.gemma_expert.model.", heads),
        vision=vision,
        vocab_size=embed.shape[0],
        chunk_size=int(hints.get("chunk_size", 50)),
        max_state_dim=t["state_proj.weight"].shape[1] if variant == "pi0" else int(hints.get("max_state_dim", 32)),
        max_action_dim=action_dim,
        max_token_len=int(hints.get("tokenizer_max_length", 200 if variant == "pi05" else 48)),
    )


def _lerobot_stats(path: str) -> dict[str, dict[str, list[float]]] | None:
    files = sorted(glob.glob(os.path.join(path, "policy_preprocessor_step_*_normalizer_processor.safetensors")))
    if not files:
        return None
    flat = load_file(files[0])
    stats: dict[str, dict[str, list[float]]] = {}
    for ours, theirs in _STAT_NAMES.items():
        entry = {k.rsplit(".", 1)[1]: v.flatten().tolist() for k, v in flat.items() if k.rsplit(".", 1)[0] == theirs}
        if entry:
            stats[ours] = entry
    return stats or None


def _openpi_stats(path: str) -> dict[str, dict[str, list[float]]] | None:
    files = sorted(glob.glob(os.path.join(path, "assets", "*", "norm_stats.json"))) + sorted(
        glob.glob(os.path.join(path, "norm_stats.json"))
    )
    if not files:
        return None
    with open(files[0]) as f:
        data = json.load(f)
    return {k: v for k, v in data.get("norm_stats", data).items() if k in ("state", "actions")}


def _checkpoint_files(path: str) -> tuple[str, str, dict[str, Any]]:
    """(folder, weights file, config.json contents) of a checkpoint folder or lone weights file."""
    folder, weights = (path, os.path.join(path, WEIGHTS)) if os.path.isdir(path) else (os.path.dirname(path), path)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"No π0 / π0.5 weights at {path!r} (expected {WEIGHTS}: a lerobot checkpoint folder such as "
            "pi0_base / pi05_base, an openpi PyTorch checkpoint, or a folder written by rllib_pirl)."
        )
    config = {}
    if os.path.isfile(os.path.join(folder, CONFIG)):
        with open(os.path.join(folder, CONFIG)) as f:
            config = json.load(f)
    return folder, weights, config


def _architecture(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PiConfig:
    ours = config.get("rllib_pirl", {})
    if "pi_config" in ours:
        return PiConfig.from_dict(ours["pi_config"])
    hints = dict(config)
    for key, size in (("paligemma_variant", "vlm"), ("action_expert_variant", "expert")):
        if config.get(key) in GEMMA_SIZES:
            hints.setdefault("num_heads", GEMMA_SIZES[config[key]].num_heads)
    return infer_pi_config(tensors, hints)


def weight_shapes(handle) -> dict[str, torch.Tensor]:
    """The tensors of an open ``.safetensors`` file as meta tensors: names and shapes, nothing read."""
    return {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}  # noqa: SIM118


def read_architecture(path: str) -> PiConfig:
    """A checkpoint's architecture without loading its weights (their shapes only)."""
    _, weights, config = _checkpoint_files(path)
    with safe_open(weights, "pt") as handle:
        return _architecture(config, weight_shapes(handle))


def read_pretrained(path: str) -> dict[str, Any]:
    """What a checkpoint folder (or a lone ``model.safetensors``) holds: the weights' shapes
    (``tensors``, meta tensors) and a reader of each (``read``: name → tensor, read from the
    memory-mapped file when asked), layout, architecture, statistics, tokenizer, and our own
    settings if we wrote it."""
    folder, weights, config = _checkpoint_files(path)
    handle = safe_open(weights, "pt")
    tensors = weight_shapes(handle)
    ours = config.get("rllib_pirl", {})
    pi_config = _architecture(config, tensors)
    modes = config.get("normalization_mapping")
    norm_modes = (
        {
            "state": _LEROBOT_MODES.get(modes.get("STATE"), "mean_std"),
            "actions": _LEROBOT_MODES.get(modes.get("ACTION"), "mean_std"),
        }
        if modes
        else None
    )
    tokenizer = next(
        (p for p in (os.path.join(folder, n) for n in (TOKENIZER, "paligemma_tokenizer.model")) if os.path.isfile(p)),
        None,
    )
    rl_heads = os.path.join(folder, RL_HEADS)
    return {
        "tensors": tensors,
        "read": handle.get_tensor,
        "layout": detect_layout(tensors),
        "pi_config": pi_config,
        "norm_stats": _lerobot_stats(folder) or _openpi_stats(folder),
        "norm_modes": ours.get("norm_modes", norm_modes),
        "tokenizer": tokenizer,
        "policy_kwargs": ours.get("policy_kwargs", {}),
        "rl_heads": load_file(rl_heads) if os.path.isfile(rl_heads) else None,
        "source": weights,
    }


def load_pretrained(path: str, cls, **kwargs):
    """Build ``cls`` (a :class:`PiPolicy`) from a checkpoint; ``kwargs`` (the RL
    config's) override what the checkpoint stores, except the architecture, which
    must agree with the weights."""
    info = read_pretrained(path)
    requested = kwargs.pop("pi_config", None)
    if requested is not None:
        requested = requested if isinstance(requested, PiConfig) else PiConfig.from_dict(requested)
        if requested.variant != info["pi_config"].variant and detect_variant(info["tensors"]):
            raise CheckpointMismatch(
                f"{path} is a {info['pi_config'].variant} checkpoint but pi_config.variant is {requested.variant}: "
                f"set variant: {info['pi_config'].variant}."
            )
    merged = {**info["policy_kwargs"], **{k: v for k, v in kwargs.items() if v is not None}}
    merged.setdefault("tokenizer", info["tokenizer"])
    if info["norm_stats"] is not None:
        merged.setdefault("norm_stats", info["norm_stats"])
    if info["norm_modes"] is not None:
        merged.setdefault("norm_modes", info["norm_modes"])
    model = cls(pi_config=requested or info["pi_config"], **merged)
    model.skipped_keys = load_layout_state(model, info["tensors"], info["source"], info["read"])
    if info["rl_heads"] is not None:
        heads = {k: v for k, v in info["rl_heads"].items() if k.split(".")[0] in ("value_head", "noise_head")}
        try:
            model.load_state_dict(heads, strict=False)
        except RuntimeError as e:  # head sizes changed in the RL config: keep the new heads
            print(f"[pi0] RL heads of {path} not loaded ({e.__class__.__name__}): sizes differ from this config.")
    return model


def save_pretrained(model, path: str, layout: str = "lerobot", metadata: dict | None = None) -> None:
    """Write ``model`` to the folder ``path`` (atomically) in ``layout`` with its
    statistics, tokenizer and RL heads."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    tmp = path.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    prefix = "model." if layout == "lerobot" else ""
    save_file(
        {prefix + k: v.detach().cpu().contiguous() for k, v in layout_state(model).items()}, os.path.join(tmp, WEIGHTS)
    )
    head_keys = model.rl_head_state_keys()
    heads = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in head_keys}
    save_file(heads, os.path.join(tmp, RL_HEADS))
    shutil.copyfile(model.tokenizer.path, os.path.join(tmp, TOKENIZER))
    c = model.config
    kwargs = {
        k: v for k, v in model.init_kwargs.items() if k not in ("pi_config", "tokenizer", "norm_stats", "norm_modes")
    }
    inverse = {v: k for k, v in _LEROBOT_MODES.items() if k != "QUANTILE10"}
    config = {
        "type": c.variant,
        "chunk_size": c.chunk_size,
        "max_state_dim": c.max_state_dim,
        "max_action_dim": c.max_action_dim,
        "tokenizer_max_length": c.max_token_len,
        "image_resolution": [c.vision.image_size, c.vision.image_size],
        "normalization_mapping": {
            "VISUAL": "IDENTITY",
            "STATE": inverse[model.norm_modes["state"]],
            "ACTION": inverse[model.norm_modes["actions"]],
        },
        "rllib_pirl": {
            "model_class": f"{type(model).__module__}:{type(model).__name__}",
            "pi_config": c.to_dict(),
            "norm_modes": model.norm_modes,
            "policy_kwargs": kwargs,
            "metadata": metadata or {},
        },
    }
    with open(os.path.join(tmp, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    if model.norm_stats:
        flat = {
            f"{_STAT_NAMES[name]}.{stat}": torch.tensor(values, dtype=torch.float32)
            for name, entry in model.norm_stats.items()
            for stat, values in entry.items()
        }
        save_file(flat, os.path.join(tmp, STATS))
        if layout == "openpi":
            os.makedirs(os.path.join(tmp, "assets", "rllib_pirl"))
            with open(os.path.join(tmp, "assets", "rllib_pirl", "norm_stats.json"), "w") as f:
                json.dump({"norm_stats": model.norm_stats}, f)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
