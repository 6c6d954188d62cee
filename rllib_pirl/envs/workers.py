"""Simulators that hold one env per process, as a gymnasium vector env of worker processes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar

import gymnasium as gym

#: The slot (0 .. #sampling env runners − 1) of the env runner that is making its env, set by
#: :class:`rllib_pirl.env_runner.FlowEnvRunner` (RLlib's env_config does not carry it).
RUNNER_SLOT: ContextVar[int] = ContextVar("rllib_pirl_runner_slot", default=0)


def worker_vector_env(make_task_env: Callable, config, num_envs: int) -> gym.vector.AsyncVectorEnv:
    """``num_envs`` worker processes, sub-env i made by ``make_task_env(config, offset + i)``
    where the offset continues the index across RLlib's env runners (``RUNNER_SLOT · num_envs``,
    so that the runners together cover ``#runners × num_envs`` task slots); gymnasium's
    next-step autoreset, which RLlib assumes."""
    offset = RUNNER_SLOT.get() * num_envs
    fns = [functools.partial(make_task_env, config, offset + i) for i in range(num_envs)]
    return gym.vector.AsyncVectorEnv(fns, context="forkserver", autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
