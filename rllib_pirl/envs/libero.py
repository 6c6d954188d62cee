"""LIBERO (robosuite + MuJoCo) tasks as chunked, RLlib-ready environments.

A LIBERO env (:class:`LiberoTaskEnv`) is one task of one suite — ``libero_spatial``,
``libero_object``, ``libero_goal``, ``libero_10`` (LIBERO-Long) or ``libero_90`` — in one
process (LIBERO simulates on the CPU, one env per process). :func:`make_libero_env`
(registered as ``LIBERO``) builds a chunked single env, or — when RLlib asks for
``num_envs`` (``gym_env_vectorize_mode="vector_entry_point"``) — a gymnasium
``AsyncVectorEnv`` of worker processes with the next-step autoreset RLlib assumes;
sub-env ``i`` runs task ``tasks[i mod #tasks]`` (with several env runners the index
continues across them, so ``num_envs × runners ≥ #tasks`` covers every task).

Observations, as π0 / π0.5 take LIBERO (openpi's convention):
``{"image": agent-view camera (S, S, 3) uint8, "wrist_image": wrist camera (S, S, 3),
"state": 8-D [eef position (3), eef axis-angle (3), gripper joints (2)], "task_id": (1,)
int64}``. Both images are rotated 180° (MuJoCo renders them upside down). ``task_id``
indexes the env's ``instructions`` (the tasks' language): the instruction reaches the
model as an id, which the model's tokenizer turns into tokens (strings in an observation
are corrupted by RLlib; π0.5 puts the state into its prompt, so tokenizing belongs to the
model).

Actions: 7-D in [−1, 1] — delta end-effector position (3) and rotation (3) for robosuite's
OSC_POSE controller, gripper (−1 open, +1 close). Reward: sparse, 1.0 on the step the task
succeeds, which ends the episode; episodes are truncated after the suite's step limit
(the paper's 240 / 240 / 320 / 480; libero_90: 400) counted after ``settle_steps`` no-op
steps that let the objects settle at reset (the standard evaluation's 10).

Resets go to the suite's fixed initial states (50 per task): ``init_states: random``
draws one from the reset seed (training), ``ordered`` takes id ``seed mod 50`` for a
seeded reset and the next id otherwise (evaluation: seeds 0..49 = the standard
protocol's 50 episodes per task). ``reset(options={"init_state_id": k})`` picks one.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from rllib_pirl.envs.chunking import ActionChunkWrapper
from rllib_pirl.envs.env_config import dataclass_kwargs
from rllib_pirl.envs.libero_setup import LiberoSetupError, import_libero
from rllib_pirl.envs.workers import worker_vector_env

#: The five suites and their episode limits (env steps; the paper's, libero_90: openpi's).
SUITE_MAX_STEPS: dict[str, int] = {
    "libero_spatial": 240,
    "libero_object": 240,
    "libero_goal": 320,
    "libero_10": 480,
    "libero_90": 400,
}
INIT_STATE_MODES = ("random", "ordered")
CAMERAS = ("image", "wrist_image")
#: robosuite's camera names behind our image keys
ROBOSUITE_CAMERAS = {"image": "agentview", "wrist_image": "robot0_eye_in_hand"}
NO_OP = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)  # hold still, gripper open

__all__ = ["SUITE_MAX_STEPS", "LiberoConfig", "LiberoSetupError", "LiberoTaskEnv", "make_libero_env"]


@functools.cache
def suite_tasks(suite: str) -> list[Any]:
    """The tasks of a suite (LIBERO's ``Task`` tuples, in the benchmark's order)."""
    check_suite(suite)
    import_libero()
    from libero.libero import benchmark

    return list(benchmark.get_benchmark_dict()[suite]().tasks)


def all_instructions() -> list[str]:
    """The distinct instructions of all five suites (sorted)."""
    return sorted({task.language for suite in SUITE_MAX_STEPS for task in suite_tasks(suite)})


def check_suite(suite: str) -> None:
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; valid: {', '.join(SUITE_MAX_STEPS)}.")


@dataclass
class LiberoConfig:
    """Settings of a LIBERO env (keys of ``env_config``)."""

    suite: str = "libero_spatial"
    #: ``all``, or a list of task ids (0-based, the suite's order) and/or task names
    tasks: Any = "all"
    camera_size: int = 224
    action_chunk: int = 5
    max_episode_steps: int | None = None  # default: the suite's
    init_states: str = "random"
    settle_steps: int = 10
    seed: int = 0

    @classmethod
    def from_env_config(cls, env_config) -> LiberoConfig:
        self = cls(**dataclass_kwargs(cls, env_config, "LIBERO"))
        self.validate()
        return self

    def validate(self) -> None:
        check_suite(self.suite)
        if self.init_states not in INIT_STATE_MODES:
            raise ValueError(f"init_states must be one of {INIT_STATE_MODES}, got {self.init_states!r}.")
        for name in ("camera_size", "action_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if not isinstance(self.settle_steps, int) or self.settle_steps < 0:
            raise ValueError(f"settle_steps must be an integer >= 0, got {self.settle_steps!r}.")
        if self.max_episode_steps is None:
            self.max_episode_steps = SUITE_MAX_STEPS[self.suite]
        if not isinstance(self.max_episode_steps, int) or self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be an integer >= 1, got {self.max_episode_steps!r}.")
        if self.action_chunk > self.max_episode_steps:
            raise ValueError(
                f"action_chunk={self.action_chunk} is longer than the episode limit of {self.suite} "
                f"({self.max_episode_steps} env steps)."
            )
        self.tasks = self.task_ids()

    def task_ids(self) -> list[int]:
        """The chosen tasks as ids of the suite (``tasks`` may name them or number them)."""
        tasks = suite_tasks(self.suite)
        names = [t.name for t in tasks]
        if self.tasks == "all":
            return list(range(len(tasks)))
        chosen = self.tasks if isinstance(self.tasks, list | tuple) else [self.tasks]
        if not chosen:
            raise ValueError("env_config.tasks is empty; give 'all' or task ids / names.")
        ids = []
        for task in chosen:
            if isinstance(task, bool) or not isinstance(task, int | str | np.integer):
                raise TypeError(f"A LIBERO task is an id or a name, got {task!r}.")
            if isinstance(task, str) and task.strip().lstrip("-").isdigit():
                task = int(task)
            if isinstance(task, str):
                if task not in names:
                    listing = "\n  ".join(f"{i}: {n}" for i, n in enumerate(names))
                    raise ValueError(f"Unknown {self.suite} task {task!r}. Its tasks:\n  {listing}")
                ids.append(names.index(task))
            elif not 0 <= task < len(tasks):
                raise ValueError(f"Task id {task} is out of range: {self.suite} has tasks 0..{len(tasks) - 1}.")
            else:
                ids.append(int(task))
        return ids

    def instruction_list(self) -> list[str]:
        tasks = suite_tasks(self.suite)
        return [tasks[i].language for i in self.tasks]

    def task_files(self, suite_task_id: int) -> tuple[str, str]:
        """``(bddl file, initial-states file)`` of a task of the suite."""
        libero = import_libero()
        task = suite_tasks(self.suite)[suite_task_id]
        return (
            os.path.join(libero.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
            os.path.join(libero.get_libero_path("init_states"), task.problem_folder, task.init_states_file),
        )

    def init_state_table(self, suite_task_id: int) -> np.ndarray:
        """The task's fixed initial states (LIBERO ships 50 per task)."""
        import torch

        path = self.task_files(suite_task_id)[1]
        if not os.path.isfile(path):
            raise LiberoSetupError(f"LIBERO file missing: {path} (the hf-libero install is incomplete).")
        return np.asarray(torch.load(path, weights_only=False))


def num_initial_states(env_config) -> int:
    """How many fixed initial states every task of ``env_config`` has (the evaluation
    protocol runs each once: episode i = initial state i)."""
    config = LiberoConfig.from_env_config(env_config)
    return min(len(config.init_state_table(i)) for i in config.tasks)


def observation_space(camera_size: int, num_tasks: int) -> gym.spaces.Dict:
    image = gym.spaces.Box(0, 255, (camera_size, camera_size, 3), np.uint8)
    return gym.spaces.Dict(
        {
            "image": image,
            "wrist_image": image,
            "state": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32),
            "task_id": gym.spaces.Box(0, num_tasks - 1, (1,), np.int64),
        }
    )


def robot_state(raw: dict) -> np.ndarray:
    """π0's 8-D LIBERO state: eef position, eef orientation as axis-angle, gripper joints."""
    from robosuite.utils.transform_utils import quat2axisangle

    return np.concatenate(
        [
            raw["robot0_eef_pos"],
            quat2axisangle(np.asarray(raw["robot0_eef_quat"], np.float64)),
            raw["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)


def upright(image: np.ndarray) -> np.ndarray:
    """MuJoCo's offscreen images are upside down: rotate 180° (both axes flipped)."""
    return np.ascontiguousarray(np.asarray(image)[::-1, ::-1])


class LiberoTaskEnv(gym.Env):
    """One task of a LIBERO suite (see the module docstring).

    ``info`` carries ``success``, ``task_id`` (index in the env's task list), ``task``
    (the task name) and ``init_state_id``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, config: LiberoConfig, task_index: int = 0, render_mode: str | None = None):
        import_libero()
        from libero.libero.envs import OffScreenRenderEnv

        self.config, self.task_index = config, task_index
        self.suite_task_id = config.tasks[task_index]
        self.task, self.instructions = suite_tasks(config.suite)[self.suite_task_id].name, config.instruction_list()
        bddl = config.task_files(self.suite_task_id)[0]
        if not os.path.isfile(bddl):
            raise LiberoSetupError(f"LIBERO file missing: {bddl} (the hf-libero install is incomplete).")
        self.init_state_table = config.init_state_table(self.suite_task_id)
        self.render_mode = render_mode
        try:
            self.env = OffScreenRenderEnv(
                bddl_file_name=bddl,
                camera_heights=config.camera_size,
                camera_widths=config.camera_size,
                hard_reset=False,  # 0.15 s instead of ~3 s: the model is not rebuilt at each reset
            )
        except Exception as e:  # MuJoCo/EGL raise many types; keep the cause, add the fix
            if "EGL" in type(e).__name__ or "gl" in str(e).lower():
                raise LiberoSetupError(
                    f"MuJoCo could not render ({e}). LIBERO renders offscreen with MUJOCO_GL=egl (needs libEGL, "
                    "Debian package libegl1, and a Mesa driver, libegl-mesa0) or MUJOCO_GL=osmesa (libosmesa6)."
                ) from e
            raise
        self.observation_space = observation_space(config.camera_size, len(config.tasks))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.init_state_id, self._next_id, self._rng = -1, 0, np.random.default_rng(config.seed)
        self._steps = 0

    @property
    def num_init_states(self) -> int:
        return len(self.init_state_table)

    def _obs(self, raw) -> dict[str, np.ndarray]:
        obs = {key: upright(raw[f"{ROBOSUITE_CAMERAS[key]}_image"]) for key in CAMERAS}
        obs["state"] = robot_state(raw)
        obs["task_id"] = np.array([self.task_index], np.int64)
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": success, "task_id": self.task_index, "task": self.task, "init_state_id": self.init_state_id}

    def _choose_init_state(self, seed, options) -> int:
        n = self.num_init_states
        if options and "init_state_id" in options:
            k = options["init_state_id"]
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k < n:
                raise ValueError(f"init_state_id must be an integer in 0..{n - 1} ({self.task}), got {k!r}.")
            return int(k)
        if self.config.init_states == "ordered":
            k = seed % n if seed is not None else self._next_id % n
            self._next_id = k + 1
            return k
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        return int(self._rng.integers(n))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.init_state_id = self._choose_init_state(seed, options)
        if seed is not None:
            self.env.seed(int(seed))  # LIBERO seeds numpy's global generator (fixture placement)
        self.env.reset()
        # robosuite's soft reset keeps each gripper's smoothed command from the last episode
        # (a hard reset rebuilds the gripper): without this, the first episode after
        # construction differed from later ones with the same seed and initial state.
        for robot in self.env.robots:
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        raw = self.env.set_init_state(self.init_state_table[self.init_state_id])
        for _ in range(self.config.settle_steps):
            raw, _, _, _ = self.env.step(NO_OP)
        self._steps = 0
        return self._obs(raw), self._info(False)

    def step(self, action):
        action = np.asarray(action, np.float32).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"A LIBERO action has 7 numbers (Δpos 3, Δrot 3, gripper), got shape {action.shape}.")
        raw, _, _, _ = self.env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(self.env.check_success())
        truncated = not success and self._steps >= self.config.max_episode_steps
        return self._obs(raw), float(success), success, truncated, self._info(success)

    def render(self):
        return self._obs(self.env.env._get_observations())["image"]

    def close(self):
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None


def make_task_env(config: LiberoConfig, index: int, render_mode: str | None = None) -> gym.Env:
    """Sub-env ``index`` of a vector env: task ``index mod #tasks``, chunked."""
    import torch

    torch.set_num_threads(1)
    env = LiberoTaskEnv(config, index % len(config.tasks), render_mode=render_mode)
    return ActionChunkWrapper(env, config.action_chunk)


def make_libero_task_makers(env_config) -> list:
    """One maker per task of ``env_config`` (per-task evaluation: an env at a time, LIBERO
    envs are heavy); each env's episodes go through the initial states in order."""
    config = LiberoConfig.from_env_config(dict(env_config or {}, init_states="ordered"))
    return [functools.partial(make_task_env, config, i) for i in range(len(config.tasks))]


def make_libero_env(env_config) -> gym.Env:
    """Env creator of the registered ``LIBERO`` env (see the module docstring)."""
    num_envs = (env_config or {}).get("num_envs")
    config = LiberoConfig.from_env_config(env_config)
    if num_envs is None:
        return make_task_env(config, 0)
    return worker_vector_env(make_task_env, config, num_envs, int(env_config.get("group_size", 1)))


def max_episode_steps(env_config) -> int:
    """The episode step limit of ``env_config`` (default: its suite's)."""
    return LiberoConfig.from_env_config(env_config).max_episode_steps


def instructions(env_config) -> list[str]:
    """The instruction of each task of ``env_config`` (index = ``task_id``)."""
    return LiberoConfig.from_env_config(env_config).instruction_list()


def observation_features(env_config) -> dict:
    """The camera keys and state size of ``env_config``'s observations."""
    LiberoConfig.from_env_config(env_config)  # bad keys stop here
    return {"cameras": list(CAMERAS), "state_dim": 8}


def sampled_tasks(env_config) -> list[str]:
    """The names of the tasks the sub-envs run in turn (sub-env i: task i mod #tasks)."""
    config = LiberoConfig.from_env_config(env_config)
    tasks = suite_tasks(config.suite)
    return [tasks[i].name for i in config.tasks]
