"""ManiSkill3 tasks as chunked, RLlib-ready environments.

One task env (:class:`ManiSkillTaskEnv`) wraps a ManiSkill CPU-simulation env:
numpy observations in the format below, the chosen reward, success ends the
episode. :func:`make_maniskill_env` (registered as ``ManiSkill``) builds a chunked
single env, or — when RLlib asks for ``num_envs`` (``gym_env_vectorize_mode=
"vector_entry_point"``) — a vector env with gymnasium's next-step autoreset that RLlib
assumes: on the CPU backend one simulator per worker process (the CPU simulation holds
one env per process; a suite of several tasks is mixed inside one vector env), on the GPU
backend one batched simulation of one task (:mod:`rllib_pirl.envs.maniskill_batched`).

Observations:
- ``obs_mode="state"``: a Dict ``{"state": Box(state_dim), "task_id": Box(int64, (1,))}``
  (the privileged state, zero-padded to the largest state of the suite);
- ``"rgb"``: ``{"state": proprioception, "base_camera": uint8 (S, S, 3),
  "hand_camera": uint8 (S, S, 3), "task_id"}``; ``"state+rgb"``: the privileged state
  and both cameras.
``task_id`` indexes ``instructions`` (env attribute and ``info``): instructions
travel as integer ids, never as strings in the observation.

Reward modes: ``"pirl"`` (the paper's: potential Φ = 0.1·grasped + 0.1·grasp held
for ≥ 2 steps + 1.0·success, paid as increments Φ_t − Φ_{t−1}), ``"sparse"``
(1 on success) and ``"dense"`` (ManiSkill's normalized dense reward).
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from rllib_pirl.envs.chunking import ActionChunkWrapper
from rllib_pirl.envs.env_config import dataclass_kwargs
from rllib_pirl.envs.workers import worker_vector_env

#: The offline tasks of the suite (robot assets ship in the wheel; motion-planning
#: solutions exist for all but RollBall), each with a natural-language instruction.
TASK_INSTRUCTIONS: dict[str, str] = {
    "PickCube-v1": "pick up the red cube and move it to the green goal",
    "PushCube-v1": "push the cube to the red and white target",
    "PullCube-v1": "pull the cube back to the red and white target",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PlaceSphere-v1": "place the blue ball into the bin",
    "LiftPegUpright-v1": "lift the peg and stand it upright",
    "PegInsertionSide-v1": "insert the peg into the hole on the side of the box",
    "PullCubeTool-v1": "use the tool to pull the cube closer",
    "StackPyramid-v1": "stack the three cubes into a pyramid",
    "PlugCharger-v1": "plug the charger into the receptacle",
}
#: The default multi-task suite.
SUITE: list[str] = [
    "PickCube-v1",
    "PushCube-v1",
    "PullCube-v1",
    "StackCube-v1",
    "PlaceSphere-v1",
    "LiftPegUpright-v1",
]
OBS_MODES = ("state", "rgb", "state+rgb")
REWARD_MODES = ("pirl", "sparse", "dense")
BACKENDS = ("auto", "cpu", "gpu")
CAMERAS = ("base_camera", "hand_camera")
VULKAN_HINT = (
    "No usable Vulkan device for ManiSkill/SAPIEN. On a CPU machine run "
    "`bash scripts/setup_maniskill.sh` and `source .vulkan/env.sh` (Mesa 25 lavapipe); "
    "on a GPU machine install the NVIDIA Vulkan driver."
)


class ManiSkillSetupError(RuntimeError):
    """ManiSkill cannot run here (missing assets, no Vulkan device, …)."""


@dataclass
class ManiSkillConfig:
    """Settings of a ManiSkill env (keys of ``env_config``)."""

    tasks: list[str] = field(default_factory=lambda: ["PickCube-v1"])
    obs_mode: str = "state"
    camera_size: int = 64
    control_mode: str = "pd_ee_delta_pos"
    action_chunk: int = 5
    max_episode_steps: int = 100
    reward_mode: str = "pirl"
    instructions: list[str] | None = None  # default: TASK_INSTRUCTIONS
    seed: int = 0
    backend: str = "auto"
    state_dim: int | None = None  # default: the largest state of the tasks
    #: the tasks the sub-envs of a vector env run (default: all of ``tasks``); the others keep
    #: their ids, instructions and share of the state size (e.g. RL on one task of the suite)
    train_tasks: list[str] | None = None

    @classmethod
    def from_env_config(cls, env_config) -> ManiSkillConfig:
        config = dataclass_kwargs(cls, env_config, "ManiSkill")
        if config.get("tasks") == "suite":
            config["tasks"] = list(SUITE)
        self = cls(**config)
        self.validate()
        return self

    def validate(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if not self.tasks:
            raise ValueError("env_config.tasks is empty.")
        for task in self.tasks:
            check_task(task)
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {self.obs_mode!r}.")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {self.reward_mode!r}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        if not isinstance(self.camera_size, int) or self.camera_size < 1:
            raise ValueError(f"camera_size must be an integer >= 1 (pixels), got {self.camera_size!r}.")
        if not isinstance(self.action_chunk, int) or self.action_chunk < 1:
            raise ValueError(f"action_chunk must be an integer >= 1, got {self.action_chunk!r}.")
        if self.action_chunk > self.max_episode_steps:
            raise ValueError(
                f"action_chunk={self.action_chunk} is longer than max_episode_steps={self.max_episode_steps}."
            )
        if self.instructions is not None and len(self.instructions) != len(self.tasks):
            raise ValueError(f"{len(self.instructions)} instructions for {len(self.tasks)} tasks.")
        if isinstance(self.train_tasks, str):
            self.train_tasks = [self.train_tasks]
        if self.train_tasks is not None:
            unknown = [t for t in self.train_tasks if t not in self.tasks]
            if not self.train_tasks or unknown:
                raise ValueError(
                    f"env_config.train_tasks must be a non-empty list of tasks of env_config.tasks "
                    f"({', '.join(self.tasks)}); got {self.train_tasks!r}."
                )

    def task_index_of_sub_env(self, index: int) -> int:
        """The task (its index in ``tasks``, the task id) that sub-env ``index`` of a vector env
        runs: ``train_tasks[index mod #train_tasks]``, or ``tasks[index mod #tasks]``."""
        if self.train_tasks is None:
            return index % len(self.tasks)
        return self.tasks.index(self.train_tasks[index % len(self.train_tasks)])

    def instruction_list(self) -> list[str]:
        return list(self.instructions) if self.instructions else [TASK_INSTRUCTIONS.get(t, t) for t in self.tasks]


def registered_tasks() -> dict[str, Any]:
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    from mani_skill.utils.registration import REGISTERED_ENVS

    return REGISTERED_ENVS


def offline_tasks() -> list[str]:
    """Registered tasks that need no downloaded assets."""
    return sorted(uid for uid, spec in registered_tasks().items() if not (spec.asset_download_ids or []))


def check_task(task: str) -> None:
    """Unknown task → ValueError listing the offline tasks; a task whose assets are
    missing → ManiSkillSetupError naming them (and no empty asset folder left)."""
    from mani_skill.utils import assets

    specs = registered_tasks()
    if task not in specs:
        raise ValueError(
            f"Unknown ManiSkill task {task!r}. Tasks that run offline: {', '.join(offline_tasks())}. "
            f"The multi-task suite: {', '.join(SUITE)} (env_config.tasks: suite)."
        )
    missing = []
    for asset_id in specs[task].asset_download_ids or []:
        ids = (
            assets.expand_data_group_into_individual_data_source_ids(asset_id)
            if asset_id in assets.DATA_GROUPS
            else [asset_id]
        )
        for data_id in ids:
            source = assets.DATA_SOURCES[data_id]
            folder = source.output_dir / source.target_path
            if folder.is_dir() and not any(folder.iterdir()):
                # A failed download leaves an empty folder that ManiSkill takes for the
                # asset (and breaks later runs): remove it, count the asset missing.
                shutil.rmtree(folder)
            if not assets.is_data_source_downloaded(data_id):
                missing.append(f"{data_id} (expected at {folder})")
    if missing:
        raise ManiSkillSetupError(
            f"ManiSkill task {task!r} needs downloaded assets: {'; '.join(missing)}. On a machine with "
            f"internet access run `python -m mani_skill.utils.download_asset {task}` and copy the data folder "
            "(MS_ASSET_DIR, default ~/.maniskill/data) here; or choose an offline task."
        )


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return backend


#: our obs_mode → ManiSkill's
MS_OBS_MODES = {"state": "state", "rgb": "rgb", "state+rgb": "rgb+state"}


def maniskill_make_kwargs(config: ManiSkillConfig, sim_backend: str, render_mode: str | None = None) -> dict:
    """``gym.make`` arguments of a ManiSkill task env for ``config``."""
    kwargs = {
        "obs_mode": MS_OBS_MODES[config.obs_mode],
        "control_mode": config.control_mode,
        "render_backend": "cpu" if sim_backend == "physx_cpu" else "gpu",
        "sim_backend": sim_backend,
        "max_episode_steps": config.max_episode_steps,
        "reward_mode": "normalized_dense" if config.reward_mode == "dense" else "sparse",
        "render_mode": render_mode,
    }
    if config.obs_mode != "state":
        kwargs["robot_uids"] = "panda_wristcam"
        kwargs["sensor_configs"] = {"width": config.camera_size, "height": config.camera_size}
    return kwargs


def grasped_flags(info) -> np.ndarray:
    """Any ``is_*grasped`` entry of a ManiSkill info, per env: (N,) bool for a batched
    info, (1,) for a single env's (all False when the task reports none).

    At a reset ManiSkill's contacts are still those of the last episode's final physics
    step, so a reset after an episode that ended grasping reports a grasp. The envs
    here therefore start every episode at Φ_0 = 0 and report no success at a reset: an
    episode neither grasps nor succeeds before its first action."""
    flags = [np.asarray(v, bool).reshape(-1) for k, v in info.items() if k.startswith("is_") and k.endswith("grasped")]
    return np.any(flags, axis=0) if flags else np.zeros(1, bool)


def pirl_potential(grasped, grasp_steps, success):
    """The paper's reward potential Φ = 0.1·grasped + 0.1·(grasped ≥ 2 steps in a row) +
    1.0·success; the reward is its increment Φ_t − Φ_{t−1}. Scalars or arrays."""
    return 0.1 * np.asarray(grasped, float) + 0.1 * (np.asarray(grasp_steps) >= 2) + 1.0 * np.asarray(success, float)


class ObsFormat:
    """ManiSkill's raw observation of one env → rllib_pirl's Dict observation (see the
    module docstring); ``space`` is that Dict space."""

    def __init__(self, config: ManiSkillConfig, raw_space: gym.Space, task_index: int):
        self.config, self.task_index = config, task_index
        self.cameras = config.obs_mode != "state"
        if config.obs_mode == "rgb":  # proprioception: the agent and extra entries, flattened
            self.proprio_space = gym.spaces.Dict({"agent": raw_space["agent"], "extra": raw_space["extra"]})
            state_dim = gym.spaces.flatdim(self.proprio_space)
        else:
            state_dim = config.state_dim or gym.spaces.flatdim(
                raw_space if config.obs_mode == "state" else raw_space["state"]
            )
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)}
        if self.cameras:
            for cam in CAMERAS:
                spaces[cam] = gym.spaces.Box(0, 255, (config.camera_size, config.camera_size, 3), np.uint8)
        spaces["task_id"] = gym.spaces.Box(0, len(config.tasks) - 1, (1,), np.int64)
        self.space = gym.spaces.Dict(spaces)
        self.state_dim = state_dim

    def __call__(self, raw) -> dict[str, np.ndarray]:
        if self.config.obs_mode == "state":
            state = raw
        elif self.config.obs_mode == "state+rgb":
            state = raw["state"]
        else:
            state = gym.spaces.flatten(self.proprio_space, {"agent": raw["agent"], "extra": raw["extra"]})
        obs = {"state": _pad(np.asarray(state, np.float32).reshape(-1), self.state_dim)}
        if self.cameras:
            for cam in CAMERAS:
                obs[cam] = np.asarray(raw["sensor_data"][cam]["rgb"], dtype=np.uint8)
        obs["task_id"] = np.array([self.task_index], dtype=np.int64)
        return obs


class ManiSkillTaskEnv(gym.Env):
    """One ManiSkill task on the CPU backend in rllib_pirl's observation format.

    ``info`` carries ``success``, ``task_id`` and ``task`` (the task name).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, config: ManiSkillConfig, task_index: int = 0, render_mode: str | None = None):
        from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

        self.config, self.task_index = config, task_index
        self.task = config.tasks[task_index]
        self.instructions = config.instruction_list()
        self.render_mode = render_mode
        try:
            self.env = CPUGymWrapper(gym.make(self.task, **maniskill_make_kwargs(config, "physx_cpu", render_mode)))
        except RuntimeError as e:
            if "physical device" in str(e) or "vulkan" in str(e).lower():
                raise ManiSkillSetupError(f"{VULKAN_HINT} ({e})") from e
            raise
        self.action_space = self.env.action_space
        self.obs_format = ObsFormat(config, self.env.observation_space, task_index)
        self.observation_space = self.obs_format.space
        self._potential, self._grasp_steps = 0.0, 0

    def _pirl_potential(self, info) -> float:
        grasped = bool(grasped_flags(info)[0])
        self._grasp_steps = self._grasp_steps + 1 if grasped else 0
        return float(pirl_potential(grasped, self._grasp_steps, bool(info.get("success", False))))

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": success, "task_id": self.task_index, "task": self.task}

    def reset(self, *, seed=None, options=None):
        # Unseeded resets draw their seed from a generator seeded by the last seeded
        # reset, so an env's episodes depend only on its seeds (ManiSkill's own
        # unseeded resets also depend on what ran since).
        if seed is not None:
            self._seed_rng = np.random.default_rng(seed)
        elif getattr(self, "_seed_rng", None) is not None:
            seed = int(self._seed_rng.integers(2**31 - 1))
        raw, info = self.env.reset(seed=seed, options=options)
        if grasped_flags(info).any():
            raw, info = self._refresh_contacts()
        self._grasp_steps, self._potential = 0, 0.0  # Φ_0 = 0: see grasped_flags
        return self.obs_format(raw), self._info(False)

    def _refresh_contacts(self):
        """The reset's observation and info with contacts of the reset state. ManiSkill's
        CPU contacts are those of the last physics step: after an episode that ended
        holding the cube, the next reset reads ``is_grasped`` (in the info, and in the
        observation's state: obs_mode "state" and the proprioception of "rgb"). One physics step from the reset state refreshes
        them; the state is then put back, so the episode starts where the reset placed it."""
        base = self.env.unwrapped
        state = base.get_state_dict()
        base.scene.step()
        base.set_state_dict(state)
        return self._raw_observation()

    def step(self, action, observe: bool = True):
        """One env step. With ``observe=False`` the step makes no observation and returns
        ``None`` for it (:meth:`observe` makes it later): ManiSkill renders the cameras for
        every observation — ~97% of a camera env's step time here — while the inner steps of
        an action chunk are seen by nobody (:class:`ActionChunkWrapper`). Rewards, success
        and info are the same either way."""
        base = self.env.unwrapped
        mode = base._obs_mode
        if not observe:  # the state dict: no sensor capture, and still what rewards may read
            base._obs_mode = "state_dict"
        try:
            raw, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        finally:
            base._obs_mode = mode
        success = bool(info.get("success", False))
        if self.config.reward_mode == "pirl":  # increments of the potential
            potential = self._pirl_potential(info)
            reward, self._potential = potential - self._potential, potential
        elif self.config.reward_mode == "sparse":
            reward = float(success)
        obs = self.obs_format(raw) if observe else None
        return obs, float(reward), bool(terminated) or success, bool(truncated), self._info(success)

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current state, as ``step`` returns it."""
        return self.obs_format(self._raw_observation()[0])

    def _raw_observation(self):
        """ManiSkill's observation and info of the current state, unbatched numpy."""
        from mani_skill.utils import common

        base = self.env.unwrapped
        info = base.get_info()
        return common.unbatch(common.to_numpy(base.get_obs(info)), common.to_numpy(info))

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def _pad(x: np.ndarray, dim: int) -> np.ndarray:
    if x.shape[0] > dim:
        raise ValueError(f"state of size {x.shape[0]} does not fit state_dim={dim}")
    return np.concatenate([x, np.zeros(dim - x.shape[0], np.float32)]) if x.shape[0] < dim else x


@functools.cache
def _state_dim_of(task: str) -> int:
    """Size of a task's privileged state (from a throw-away env)."""
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    env = CPUGymWrapper(gym.make(task, obs_mode="state", render_backend="cpu", sim_backend="physx_cpu"))
    try:
        return int(np.prod(env.observation_space.shape))
    finally:
        env.close()


def max_state_dim(config: ManiSkillConfig) -> int:
    return max(_state_dim_of(t) for t in config.tasks)


def make_task_env(config: ManiSkillConfig, index: int, render_mode: str | None = None) -> gym.Env:
    """Sub-env ``index`` of a vector env (see ``ManiSkillConfig.task_index_of_sub_env``), chunked."""
    import torch

    torch.set_num_threads(1)
    env = ManiSkillTaskEnv(config, config.task_index_of_sub_env(index), render_mode=render_mode)
    return ActionChunkWrapper(env, config.action_chunk)


def _config_with_state_dim(env_config) -> ManiSkillConfig:
    """The validated config; a state size not given is the largest of its tasks'."""
    config = ManiSkillConfig.from_env_config(env_config)
    if config.state_dim is None and config.obs_mode != "rgb":
        config.state_dim = max_state_dim(config)
    return config


def make_maniskill_task_makers(env_config) -> list:
    """One maker of a chunked single env per task of ``env_config`` (for per-task
    evaluation of a suite): each keeps its task id and the suite's padded state size."""
    config = _config_with_state_dim(env_config)
    config = replace(config, train_tasks=None)  # every task, also those not trained
    return [functools.partial(make_task_env, config, i) for i in range(len(config.tasks))]


def make_maniskill_env(env_config) -> gym.Env:
    """Env creator of the registered ``ManiSkill`` env (see the module docstring)."""
    num_envs = (env_config or {}).get("num_envs")
    config = _config_with_state_dim(env_config)
    if num_envs is None:  # single envs (evaluation) always simulate on the CPU
        return make_task_env(config, 0)
    backend = config.backend
    group_size = int(env_config.get("group_size", 1))
    if backend == "auto":  # the GPU simulates one task per process: a suite stays on the CPU
        # GRPO seeds each sub-env's resets: only the CPU simulation (one env per process) can.
        backend = resolve_backend(backend) if len(config.tasks) == 1 and group_size == 1 else "cpu"
    if backend == "gpu":
        from rllib_pirl.envs.maniskill_batched import ManiSkillBatchedVectorEnv

        return ManiSkillBatchedVectorEnv(config, num_envs)
    return worker_vector_env(make_task_env, config, num_envs, group_size)


def max_episode_steps(env_config) -> int:
    """The episode step limit of ``env_config``."""
    return ManiSkillConfig.from_env_config(env_config).max_episode_steps


def grouped_resets_error(env_config) -> str | None:
    """Why GRPO's grouped resets cannot run with this env_config (None: they can)."""
    if (env_config or {}).get("backend") == "gpu":
        return (
            "GRPO needs every sub-env's reset seeded on its own; the GPU simulation resets its envs together. "
            "Set env_config.backend: cpu (or auto, which picks the CPU for GRPO)."
        )
    return None


def instructions(env_config) -> list[str]:
    """The instruction of each task of ``env_config`` (index = ``task_id``)."""
    return ManiSkillConfig.from_env_config(env_config).instruction_list()


def observation_features(env_config) -> dict:
    """The camera keys of ``env_config``'s observations (its state size is the task's: None)."""
    config = ManiSkillConfig.from_env_config(env_config)
    return {"cameras": list(CAMERAS) if config.obs_mode != "state" else [], "state_dim": None}


def sampled_tasks(env_config) -> list[str]:
    """The tasks the training sub-envs run in turn: ``train_tasks``, else ``tasks``."""
    config = ManiSkillConfig.from_env_config(env_config)
    return list(config.train_tasks or config.tasks)
