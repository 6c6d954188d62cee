"""Simulators that hold one env per process, as a gymnasium vector env of worker processes."""

from __future__ import annotations

import functools
from collections.abc import Callable

import gymnasium as gym


def worker_vector_env(make_task_env: Callable, config, env_config, num_envs: int) -> gym.vector.AsyncVectorEnv:
    """``num_envs`` worker processes, sub-env i made by ``make_task_env(config, offset + i)``
    where the offset continues the index across RLlib's env runners (``worker_index``);
    gymnasium's next-step autoreset, which RLlib assumes."""
    offset = int(getattr(env_config, "worker_index", 0) or 0) * num_envs
    fns = [functools.partial(make_task_env, config, offset + i) for i in range(num_envs)]
    return gym.vector.AsyncVectorEnv(fns, context="forkserver", autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
