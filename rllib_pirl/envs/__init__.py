"""Environments: action chunking, the small PointReach task, and the table of the envs
that ``rllib_pirl`` registers with Ray Tune (:data:`ENVS`, one record per env)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym

from rllib_pirl.envs.chunking import ActionChunkWrapper
from rllib_pirl.envs.point_reach import PointReachEnv
from rllib_pirl.imports import deferred


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


def chunked_gym_config(env, env_config) -> dict | None:
    """For a bare gymnasium id (registered with gymnasium, not with Ray Tune), the env_config
    of ``ChunkedGym`` that runs it in chunks (its own env_config becomes ``kwargs`` of
    ``gymnasium.make``); None for any other env."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if not isinstance(env, str) or env not in gym.registry or _global_registry.contains(ENV_CREATOR, env):
        return None
    config = dict(env_config or {})
    chunk = config.pop("action_chunk", None)
    return {"id": env, "kwargs": config, **({"action_chunk": chunk} if chunk is not None else {})}


def _spec_limit(env_id) -> int | None:
    """The step limit gymnasium registered for ``env_id`` (None: none or unknown id)."""
    return gym.spec(env_id).max_episode_steps if env_id in gym.registry else None


def make_point_reach(env_config) -> gym.Env:
    """Env creator of the registered ``PointReach`` env (chunked PointReach-v0)."""
    config = dict(env_config or {})
    chunk = int(config.pop("action_chunk", 1))
    return make_chunked_gym_env({"id": "rllib_pirl/PointReach-v0", "action_chunk": chunk, "kwargs": config})


@dataclass(frozen=True)
class EnvEntry:
    """What rllib_pirl knows about one registered env. Every callable takes the env's
    ``env_config``; the simulators' modules are imported only when one is called."""

    #: env_config → the env (RLlib adds ``num_envs`` for envs that build their own vector env)
    creator: Callable
    #: whether the env builds its own vector env from ``num_envs`` (one simulator per worker
    #: process): the algorithm config sets ``gym_env_vectorize_mode`` for it
    vector: bool = False
    #: env_config → makers of one single env per task, for evaluation task by task (called
    #: one at a time: a LIBERO env with cameras holds ~1 GB); None: the creator's one env
    task_makers: Callable | None = None
    #: env_config → the instruction of each ``task_id`` of its observations (the algorithm
    #: config hands them to models with prompts, π0 / π0.5); None: no instructions
    instructions: Callable | None = None
    #: env_config → how many fixed initial states each task has (evaluation episode i starts
    #: from initial state seed + i, and asks for no more); None: any reset seed is an episode
    initial_states: Callable | None = None
    #: env_config → the env's episode step limit (GRPO checks that a train batch holds whole
    #: groups); None: unknown
    max_episode_steps: Callable | None = None
    #: env_config → why GRPO's grouped, seeded resets cannot run with it (None: they can)
    grouped_resets_error: Callable | None = None
    #: env_config → the tasks its training sub-envs run in turn (sub-env slot i, or GRPO pool
    #: i, runs task i mod #tasks); None: one task
    sampled_tasks: Callable | None = None
    #: env_config → ``{"cameras": [keys], "state_dim": int | None}`` of its observations, known
    #: without building the env (a π0 checkpoint's features are checked against them before Ray
    #: starts); None: unknown
    observation_features: Callable | None = None
    #: whether the step limit is part of the task (an episode must succeed within it, and the
    #: state does not say how much time is left): GAE then ends the return at the limit instead of
    #: bootstrapping γ·V(s_T) there, unless the run sets ``time_limit_bootstrap`` (every env says)
    time_limit_is_task: bool = field(kw_only=True)


#: The envs that importing ``rllib_pirl.algorithms`` registers with Ray Tune, by name.
ENVS: dict[str, EnvEntry] = {
    # gymnasium ids: their limits (TimeLimit) interrupt tasks that would go on (RLlib's convention)
    "ChunkedGym": EnvEntry(
        make_chunked_gym_env, max_episode_steps=lambda c: _spec_limit((c or {}).get("id")), time_limit_is_task=False
    ),
    "PointReach": EnvEntry(
        make_point_reach, max_episode_steps=lambda c: _spec_limit("rllib_pirl/PointReach-v0"), time_limit_is_task=True
    ),
    "ManiSkill": EnvEntry(
        deferred("rllib_pirl.envs.maniskill:make_maniskill_env"),
        vector=True,
        task_makers=deferred("rllib_pirl.envs.maniskill:make_maniskill_task_makers"),
        instructions=deferred("rllib_pirl.envs.maniskill:instructions"),
        max_episode_steps=deferred("rllib_pirl.envs.maniskill:max_episode_steps"),
        grouped_resets_error=deferred("rllib_pirl.envs.maniskill:grouped_resets_error"),
        sampled_tasks=deferred("rllib_pirl.envs.maniskill:sampled_tasks"),
        observation_features=deferred("rllib_pirl.envs.maniskill:observation_features"),
        time_limit_is_task=True,
    ),
    "LIBERO": EnvEntry(
        deferred("rllib_pirl.envs.libero:make_libero_env"),
        vector=True,
        task_makers=deferred("rllib_pirl.envs.libero:make_libero_task_makers"),
        instructions=deferred("rllib_pirl.envs.libero:instructions"),
        initial_states=deferred("rllib_pirl.envs.libero:num_initial_states"),
        max_episode_steps=deferred("rllib_pirl.envs.libero:max_episode_steps"),
        sampled_tasks=deferred("rllib_pirl.envs.libero:sampled_tasks"),
        observation_features=deferred("rllib_pirl.envs.libero:observation_features"),
        time_limit_is_task=True,
    ),
}

__all__ = ["ENVS", "ActionChunkWrapper", "EnvEntry", "PointReachEnv", "make_chunked_gym_env", "make_point_reach"]
