"""Simulators that hold one env per process, as a gymnasium vector env of worker processes
that restarts a simulator whose process died (or whose env raised)."""

from __future__ import annotations

import functools
import logging
import multiprocessing
from collections.abc import Callable
from contextvars import ContextVar
from copy import deepcopy

import gymnasium as gym
import numpy as np
from gymnasium.vector import async_vector_env
from gymnasium.vector.async_vector_env import AsyncState, _async_worker
from gymnasium.vector.utils import CloudpickleWrapper, concatenate, iterate

from rllib_pirl.envs.groups import SeededResets

logger = logging.getLogger(__name__)

#: The slot (0 .. #sampling env runners − 1) of the env runner that is making its env, set by
#: :class:`rllib_pirl.env_runner.FlowEnvRunner` (RLlib's env_config does not carry it).
RUNNER_SLOT: ContextVar[int] = ContextVar("rllib_pirl_runner_slot", default=0)
#: info key of a step whose episode a restarted simulator ended
RESTARTED = "simulator_restarted"
_DEAD = (EOFError, ConnectionResetError, BrokenPipeError, OSError)


class RestartingAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's ``AsyncVectorEnv`` (next-step autoreset) in which a sub-env whose worker
    process died (a crashed or killed simulator) or whose env raised is replaced by a new
    worker instead of ending the run: the step returns that sub-env's episode as truncated
    (reward 0, ``info["simulator_restarted"] = True``, the observation of the new worker's
    reset standing in for the lost last one), and the next step starts its new episode from
    that reset — what next-step autoreset does after any truncation. The other sub-envs'
    steps are kept; nothing collected is lost. A sub-env that fails ``max_restarts`` times
    in a row (e.g. on every reset) raises."""

    def __init__(self, env_fns, max_restarts: int = 3, **kwargs):
        # A new worker must write to the same shared observation memory as the one it replaces;
        # gymnasium's constructor keeps it only in a local variable: record it as it is made.
        made = []
        create = async_vector_env.create_shared_memory
        async_vector_env.create_shared_memory = lambda *a, **k: made.append(create(*a, **k)) or made[-1]
        try:
            super().__init__(env_fns, **kwargs)
        finally:
            async_vector_env.create_shared_memory = create
        self._obs_buffer = made[0] if self.shared_memory else None
        self._ctx = multiprocessing.get_context(kwargs.get("context"))
        self.max_restarts = max_restarts
        self.restarts = 0  # total, for tests and logs
        self._failures = [0] * self.num_envs  # in a row, per sub-env
        self._noop = set()  # sub-envs whose next step is their new episode's (already reset) start
        self._dead = {}  # sub-envs found dead when a step was sent: index → why

    # -- restarting ----------------------------------------------------------------------
    def _restart(self, index: int, why: str) -> tuple:
        """Replace worker ``index`` and reset it; returns its reset ``(observation, info)``."""
        self._failures[index] += 1
        if self._failures[index] > self.max_restarts:
            self._state = AsyncState.DEFAULT
            self.close(terminate=True)  # every worker: nothing is left waiting on a pipe
            raise RuntimeError(f"Sub-env {index} failed {self.max_restarts} times in a row ({why}); giving up.")
        logger.warning("Sub-env %d: %s. Restarting its simulator process; its episode ends truncated.", index, why)
        old = self.processes[index]
        if old.is_alive():
            old.kill()
        old.join(timeout=10)
        if self.parent_pipes[index] is not None:
            self.parent_pipes[index].close()
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_async_worker,
            name=f"Worker<{type(self).__name__}>-{index}",
            args=(
                index,
                CloudpickleWrapper(self.env_fns[index]),
                child,
                parent,
                self._obs_buffer,
                self.error_queue,
                self.autoreset_mode,
            ),
            daemon=True,
        )
        process.start()
        child.close()
        self.parent_pipes[index], self.processes[index] = parent, process
        self.restarts += 1
        parent.send(("reset", {"seed": None, "options": None}))
        try:
            result, success = parent.recv()
        except _DEAD:
            return self._restart(index, "its new simulator process died on reset")
        if not success:
            return self._restart(index, f"its new env raised on reset: {self._error_of(index)}")
        return result

    def _error_of(self, index: int) -> str:
        """The error a worker reported (gymnasium's workers put it on the shared queue)."""
        try:
            worker, exctype, value, _ = self.error_queue.get(timeout=5)
        except Exception:  # noqa: BLE001 - nothing reported
            return "unknown error"
        return f"{exctype.__name__}: {value}" + ("" if worker == index else f" (reported by sub-env {worker})")

    def _receive(self, index: int):
        """``(result, None)`` of a worker's answer, or ``(None, why)`` when it died or raised."""
        try:
            result, success = self.parent_pipes[index].recv()
        except _DEAD:
            return None, f"its simulator process died (exit code {self.processes[index].exitcode})"
        if not success:
            return None, f"its env raised: {self._error_of(index)}"
        return result, None

    # -- the vector env's calls ---------------------------------------------------------
    def step_async(self, actions):
        self._assert_is_running()
        if self._state != AsyncState.DEFAULT:
            return super().step_async(actions)  # gymnasium's error
        self._dead = {}
        for index, (pipe, action) in enumerate(zip(self.parent_pipes, iterate(self.action_space, actions))):
            try:
                pipe.send(("reset-noop", None) if index in self._noop else ("step", action))
            except _DEAD:  # it died while the policy was thinking
                self._dead[index] = f"its simulator process died (exit code {self.processes[index].exitcode})"
        self._state = AsyncState.WAITING_STEP

    def reset_async(self, seed=None, options=None):
        for index, process in enumerate(self.processes):
            if not process.is_alive():
                self._restart(index, f"its simulator process died (exit code {process.exitcode})")
        return super().reset_async(seed=seed, options=options)

    def step_wait(self, timeout=None):
        if self._state != AsyncState.WAITING_STEP or not self._poll_pipe_envs(timeout):
            return super().step_wait(timeout)  # gymnasium's errors
        observations, rewards, terminations, truncations, infos = [], [], [], [], {}
        for index in range(self.num_envs):
            result, why = (None, self._dead[index]) if index in self._dead else self._receive(index)
            if why is not None:  # a new worker, its reset standing in for the lost step
                observation, info = self._restart(index, why)
                result = (observation, 0.0, False, True, {**info, RESTARTED: True})
                self._noop.add(index)
            elif index in self._noop:  # the new episode's first step: the reset done above
                (observation, info), result = result, None
                result = (observation, 0.0, False, False, info)
                self._noop.discard(index)
            else:
                self._failures[index] = 0
            observations.append(result[0])
            rewards.append(result[1])
            terminations.append(result[2])
            truncations.append(result[3])
            infos = self._add_info(infos, result[4], index)
        if not self.shared_memory:
            self.observations = concatenate(self.single_observation_space, observations, self.observations)
        self._state = AsyncState.DEFAULT
        return (
            deepcopy(self.observations) if self.copy else self.observations,
            np.array(rewards, dtype=np.float64),
            np.array(terminations, dtype=np.bool_),
            np.array(truncations, dtype=np.bool_),
            infos,
        )

    def reset_wait(self, timeout=None):
        if self._state != AsyncState.WAITING_RESET or not self._poll_pipe_envs(timeout):
            return super().reset_wait(timeout)  # gymnasium's errors
        observations, infos = [], {}
        for index in range(self.num_envs):
            result, why = self._receive(index)
            if why is not None:
                result = self._restart(index, why)
            self._noop.discard(index)
            observations.append(result[0])
            infos = self._add_info(infos, result[1], index)
        if not self.shared_memory:
            self.observations = concatenate(self.single_observation_space, observations, self.observations)
        self._state = AsyncState.DEFAULT
        return (deepcopy(self.observations) if self.copy else self.observations), infos


def _seeded(make_task_env: Callable, config, index: int) -> gym.Env:
    return SeededResets(make_task_env(config, index))


def worker_vector_env(make_task_env: Callable, config, num_envs: int, group_size: int = 1) -> RestartingAsyncVectorEnv:
    """``num_envs`` worker processes, sub-env i made by ``make_task_env(config, (offset + i) //
    group_size)`` where the offset continues the index across RLlib's env runners
    (``RUNNER_SLOT · num_envs``, so that the runners together cover ``#runners × num_envs`` task
    slots) and a GRPO group (``group_size`` consecutive sub-envs) shares one task; gymnasium's
    next-step autoreset, which RLlib assumes; each sub-env's autoreset can be seeded
    (:class:`~rllib_pirl.envs.groups.SeededResets`); a dead simulator is restarted
    (:class:`RestartingAsyncVectorEnv`)."""
    offset = RUNNER_SLOT.get() * num_envs
    fns = [functools.partial(_seeded, make_task_env, config, (offset + i) // group_size) for i in range(num_envs)]
    return RestartingAsyncVectorEnv(fns, context="forkserver", autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
