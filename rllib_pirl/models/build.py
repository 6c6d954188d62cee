"""Building an action model from an RLModule's ``model_config`` (no RLlib here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_pirl.imports import import_object

DEFAULT_MODEL = "rllib_pirl.models:StateFlowPolicy"


def build_model(model_config: dict[str, Any], observation_space, action_space, noise_std_range: Sequence[float]):
    """Instantiate ``model_config["model_class"]`` for these spaces, or load
    ``model_config["init_checkpoint"]`` (a model checkpoint folder) when given.

    A model class with a ``from_spaces`` classmethod builds itself; otherwise it gets
    ``obs_dim``, ``horizon`` (= the chunk), ``action_dim`` and ``model_kwargs``. Models with
    prompts (``uses_instructions``) get ``model_config["instructions"]`` (the env's, one per
    ``task_id``).
    """
    from rllib_pirl.models.checkpoint import load_model

    instructions = model_config.get("instructions")
    init = model_config.get("init_checkpoint")
    if init:
        return load_model(init, observation_space, action_space, noise_std_range, instructions)
    cls = model_config.get("model_class", DEFAULT_MODEL)
    if isinstance(cls, str):
        cls = import_object(cls)
    kwargs = dict(model_config.get("model_kwargs") or {})
    kwargs.setdefault("noise_std_range", tuple(noise_std_range))
    if getattr(cls, "uses_instructions", False) and instructions is not None:
        kwargs.setdefault("instructions", list(instructions))
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
