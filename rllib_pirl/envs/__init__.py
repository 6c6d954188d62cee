"""Environments: action chunking, the small PointReach task, RLlib registration."""

from __future__ import annotations

import gymnasium as gym

from rllib_pirl.envs.chunking import ActionChunkWrapper
from rllib_pirl.envs.point_reach import PointReachEnv


def make_chunked_gym_env(env_config) -> gym.Env:
    """Env creator of the registered ``ChunkedGym`` env: any gymnasium id with a 1-D
    Box action space, executed in chunks. env_config: ``id`` (required),
    ``action_chunk``, ``kwargs`` (passed to ``gymnasium.make``)."""
    config = dict(env_config or {})
    env_id = config.get("id")
    if env_id is None:
        raise ValueError("ChunkedGym needs env_config.id, a gymnasium env id (e.g. 'Pendulum-v1').")
    if env_id not in gym.registry:
        raise ValueError(f"Unknown gymnasium env id {env_id!r} in env_config.id.")
    return ActionChunkWrapper(gym.make(env_id, **config.get("kwargs", {})), int(config.get("action_chunk", 1)))


def make_point_reach(env_config) -> gym.Env:
    """Env creator of the registered ``PointReach`` env (chunked PointReach-v0)."""
    config = dict(env_config or {})
    chunk = int(config.pop("action_chunk", 1))
    return make_chunked_gym_env({"id": "rllib_pirl/PointReach-v0", "action_chunk": chunk, "kwargs": config})


def make_maniskill(env_config) -> gym.Env:
    """Env creator of the registered ``ManiSkill`` env (see :mod:`rllib_pirl.envs.maniskill`;
    imported only when used)."""
    from rllib_pirl.envs.maniskill import make_maniskill_env

    return make_maniskill_env(env_config)


def make_maniskill_task_makers(env_config) -> list:
    """A maker of one single env per task of a ManiSkill suite (imported only when used)."""
    from rllib_pirl.envs.maniskill import make_maniskill_task_makers as makers

    return makers(env_config)


def make_libero(env_config) -> gym.Env:
    """Env creator of the registered ``LIBERO`` env (see :mod:`rllib_pirl.envs.libero`;
    imported only when used)."""
    from rllib_pirl.envs.libero import make_libero_env

    return make_libero_env(env_config)


def make_libero_task_makers(env_config) -> list:
    """A maker of one single env per task of a LIBERO env_config (imported only when used)."""
    from rllib_pirl.envs.libero import make_libero_task_makers as makers

    return makers(env_config)


def libero_instructions(env_config) -> list[str]:
    """The instruction of each task of a LIBERO env_config (index = ``task_id``)."""
    from rllib_pirl.envs.libero import LiberoConfig

    return LiberoConfig.from_env_config(env_config).instruction_list()


def maniskill_instructions(env_config) -> list[str]:
    """The instruction of each task of a ManiSkill env_config (index = ``task_id``)."""
    from rllib_pirl.envs.maniskill import ManiSkillConfig

    return ManiSkillConfig.from_env_config(env_config).instruction_list()


#: The env names that importing rllib_pirl registers with Ray Tune / RLlib.
ENV_CREATORS = {
    "ChunkedGym": make_chunked_gym_env,
    "PointReach": make_point_reach,
    "ManiSkill": make_maniskill,
    "LIBERO": make_libero,
}
#: Envs that build their own vector env from ``env_config["num_envs"]`` (one simulator
#: per worker process): the algorithm config sets ``gym_env_vectorize_mode`` for them.
VECTOR_ENVS = ("ManiSkill", "LIBERO")
#: Envs evaluated task by task: name -> the makers of one single env per task (called one
#: at a time: a LIBERO env with cameras holds ~1 GB).
PER_TASK_ENV_MAKERS = {"ManiSkill": make_maniskill_task_makers, "LIBERO": make_libero_task_makers}
#: Envs whose observations carry a ``task_id``: name -> its instructions from env_config
#: (the algorithm config hands them to models with prompts, π0 / π0.5).
ENV_INSTRUCTIONS = {"ManiSkill": maniskill_instructions, "LIBERO": libero_instructions}

__all__ = ["ENV_CREATORS", "ActionChunkWrapper", "PointReachEnv", "make_chunked_gym_env", "make_point_reach"]
