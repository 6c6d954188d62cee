"""Model checkpoints: a folder with ``config.json`` (class and constructor arguments)
and ``model.safetensors`` (the weights). SFT writes them; RL starts from them
(``model_config: {init_checkpoint: DIR}``)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from rllib_pirl.imports import import_object

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_model(model, path: str, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (which has ``init_kwargs``) to the folder ``path`` atomically
    (models with their own layout, π0 / π0.5, write it with ``save_pretrained``)."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(path, metadata=metadata)
        return
    tmp = path.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    cls = type(model)
    config = {
        "model_class": f"{cls.__module__}:{cls.__name__}",
        "model_kwargs": model.init_kwargs,
        "metadata": metadata or {},
    }
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, WEIGHTS_FILE)
    )
    if os.path.exists(path):
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def is_model_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint folder written by :func:`save_model`."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))


def read_config(path: str) -> dict[str, Any]:
    config_path = os.path.join(path, CONFIG_FILE)
    if not is_model_checkpoint(path):
        raise FileNotFoundError(
            f"{path} is not a model checkpoint (expected {CONFIG_FILE} and {WEIGHTS_FILE}); make one with `rllib sft`."
        )
    with open(config_path) as f:
        return json.load(f)


def load_model(path: str, observation_space=None, action_space=None, noise_std_range=None, instructions=None):
    """Rebuild and load a model; check it fits the env's spaces when given.

    ``noise_std_range`` (the RL config's) replaces the stored one: SFT does not train
    the noise head. ``instructions`` (the env's) replace the stored prompts of models
    that have prompts.
    """
    config = read_config(path)
    if "model_class" not in config:  # a π0 / π0.5 folder: ours, lerobot's, openpi's or RLinf's
        from rllib_pirl.models.pi0 import PiPolicy

        return PiPolicy.load_checkpoint(path, observation_space, action_space, noise_std_range, instructions)
    kwargs = dict(config["model_kwargs"])
    if noise_std_range is not None:
        kwargs["noise_std_range"] = list(noise_std_range)
    model = import_object(config["model_class"])(**kwargs)
    state = load_file(os.path.join(path, WEIGHTS_FILE))
    own = model.state_dict()
    # Shapes first: load_state_dict raises on a shape mismatch even with strict=False.
    wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape}
    missing, unexpected = (
        ([k for k in own if k not in state], [k for k in state if k not in own])
        if wrong
        else model.load_state_dict(state, strict=False)
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"Checkpoint {path} does not fit {config['model_class']}: missing {missing}, "
            f"unexpected {unexpected}, shapes (checkpoint, model) {wrong}."
        )
    if action_space is not None and (model.horizon < action_space.shape[0] or model.action_dim < action_space.shape[1]):
        raise ValueError(
            f"Checkpoint {path} predicts {model.horizon} x {model.action_dim} actions, fewer than the env's "
            f"chunk {action_space.shape[0]} x {action_space.shape[1]}."
        )
    obs_dim = getattr(model, "obs_dim", None)
    if observation_space is not None and obs_dim is not None:
        state_space = observation_space["state"] if hasattr(observation_space, "spaces") else observation_space
        if int(np.prod(state_space.shape)) != obs_dim:
            raise ValueError(f"Checkpoint {path} expects a {obs_dim}-D state, the env gives {state_space.shape}.")
    return model
