"""Expert demonstrations for ManiSkill tasks, offline, from ManiSkill's own tools.

``generate_demos`` runs ManiSkill's motion-planning solutions (joint-position
control, only successful episodes kept), then ManiSkill's ``replay_trajectory``
converts them to the control mode the policy uses (``pd_ee_delta_pos``) with state
observations. The result is ManiSkill's trajectory format, which ManiSkill users
know: ``DIR/TASK/motionplanning/demos.state.pd_ee_delta_pos.physx_cpu.h5`` with one
group per episode (``traj_N/obs`` (T+1, state), ``traj_N/actions`` (T, action),
``success``, ``terminated``, ``truncated``, ``env_states``) and a ``.json`` beside it
(``env_info.env_id``, the control mode, per-episode seeds).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MOTION_PLANNING = "mani_skill.examples.motionplanning.panda.run"
REPLAY = "mani_skill.trajectory.replay_trajectory"
TRAJ_NAME = "demos"
CAMERA_KEYS = ("base_camera", "hand_camera")


@dataclass
class Demo:
    task: str
    obs: np.ndarray  # (T + 1, state_dim) (or (T, state_dim): the observation before each action)
    actions: np.ndarray  # (T, action_dim)
    #: camera observations (T + 1 or T, H, W, 3) uint8 per camera, from :func:`render_demos`
    #: (then ``obs`` is the env's proprioceptive state of obs_mode "rgb") or LIBERO's files.
    images: dict[str, np.ndarray] | None = None
    #: the task's language instruction, where the demo file carries it (LIBERO)
    instruction: str | None = None


def motion_planning_tasks() -> list[str]:
    from mani_skill.examples.motionplanning.panda.run import MP_SOLUTIONS

    return sorted(MP_SOLUTIONS)


def _run(cmd: Sequence[str], what: str) -> None:
    print(f"[demos] {what}: {' '.join(cmd)}", flush=True)
    done = subprocess.run(list(cmd), check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def generate_demos(
    task: str, num: int, out_dir: str, control_mode: str = "pd_ee_delta_pos", num_procs: int = 2, seed: int = 0
) -> str:
    """Make ``num`` successful demos of ``task``; returns the converted .h5 path."""
    import numpy

    from rllib_pirl.envs.maniskill import check_task

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            f"numpy {numpy.__version__}: ManiSkill's motion planner (mplib) segfaults with numpy 2. "
            "Install the maniskill extra (`pip install -e .[maniskill]`), which pins numpy<2."
        )
    check_task(task)
    if task not in motion_planning_tasks():
        raise ValueError(
            f"No motion-planning solution for {task!r}; tasks with one: {', '.join(motion_planning_tasks())}."
        )
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    folder = os.path.join(out_dir, task, "motionplanning")
    for old in glob.glob(os.path.join(folder, f"{TRAJ_NAME}*")):
        os.remove(old)
    py = sys.executable
    _run(
        [
            py,
            "-m",
            MOTION_PLANNING,
            "-e",
            task,
            "-n",
            str(num),
            "-b",
            "cpu",
            "--only-count-success",
            "--record-dir",
            out_dir,
            "--traj-name",
            TRAJ_NAME,
            "--num-procs",
            str(num_procs),
        ],
        f"motion planning ({task}, {num} successful demos)",
    )
    source = os.path.join(folder, f"{TRAJ_NAME}.h5")
    if not os.path.exists(source):
        raise RuntimeError(f"motion planning wrote no {source}")
    _run(
        [
            py,
            "-m",
            REPLAY,
            "--traj-path",
            source,
            "-c",
            control_mode,
            "-o",
            "state",
            "--save-traj",
            "--use-first-env-state",
            "-b",
            "physx_cpu",
        ],
        f"conversion to {control_mode} with state observations",
    )
    converted = os.path.join(folder, f"{TRAJ_NAME}.state.{control_mode}.physx_cpu.h5")
    if not os.path.exists(converted):
        raise RuntimeError(f"replay_trajectory wrote no {converted}")
    kept = len(load_demos([converted]))
    if kept == 0:
        raise RuntimeError(
            f"ManiSkill's replay reproduced none of the {num} {task} demos in {control_mode} (a controller that "
            "cannot follow the planner's motion, e.g. pd_ee_delta_pos for a task that rotates the gripper): "
            "try --control-mode pd_ee_delta_pose."
        )
    lost = f" ({num - kept} of {num} not reproducible in {control_mode}, dropped)" if kept < num else ""
    print(f"[demos] {task}: {kept} demos in {converted}{lost}", flush=True)
    return converted


def find_files(paths: Sequence[str], pattern: str, none_found: str) -> list[str]:
    """Files named directly, or found under folders by the glob ``pattern`` (recursive);
    ``none_found``: the message when there are none."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "**", pattern), recursive=True))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"No demo file or folder {path}")
    if not files:
        raise FileNotFoundError(none_found)
    return files


def demo_files(paths: Sequence[str]) -> list[str]:
    """.h5 files named directly or found (converted state demos) under folders."""
    return find_files(
        paths, "*.state.*.h5", f"No converted demos (*.state.*.h5) under {list(paths)}; make them with `rllib demos`."
    )


def load_demos(paths: Sequence[str], limit_per_task: int | None = None) -> list[Demo]:
    """Read ManiSkill trajectory files (state observations) into :class:`Demo` s."""
    import h5py

    demos: list[Demo] = []
    counts: dict = {}
    for path in demo_files(paths):
        with open(os.path.splitext(path)[0] + ".json") as f:
            meta = json.load(f)
        task = meta["env_info"]["env_id"]
        if meta["env_info"]["env_kwargs"].get("obs_mode") != "state":
            raise ValueError(f"{path}: demos need state observations (obs_mode 'state'), replay with -o state.")
        with h5py.File(path, "r") as f:
            for episode in meta["episodes"]:
                if limit_per_task is not None and counts.get(task, 0) >= limit_per_task:
                    break
                group = f[f"traj_{episode['episode_id']}"]
                demos.append(Demo(task, np.asarray(group["obs"], np.float32), np.asarray(group["actions"], np.float32)))
                counts[task] = counts.get(task, 0) + 1
    return demos


def rendered_path(path: str, camera_size: int) -> str:
    """Where :func:`render_demos` keeps the camera version of a converted demo file:
    ``demos.rgbSIZE.CONTROL.physx_cpu.h5`` beside it (``traj_N/{state, base_camera,
    hand_camera, actions}``; episodes that failed on replay listed in the ``dropped``
    attribute)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, name.replace(".state.", f".rgb{camera_size}.", 1))


def render_demos(paths: Sequence[str], camera_size: int, limit_per_task: int | None = None) -> list[Demo]:
    """Re-run state demos in rllib_pirl's own ManiSkill env with cameras (obs_mode "rgb",
    ``camera_size`` px): each episode starts from its recorded first env state and
    replays its actions, so observations are exactly what the RL env produces. An
    episode that does not end in success on replay is dropped (and counted). Rendered
    episodes are kept in :func:`rendered_path` and reused."""
    import h5py

    demos: list[Demo] = []
    for path in demo_files(paths):
        with open(os.path.splitext(path)[0] + ".json") as f:
            meta = json.load(f)
        task = meta["env_info"]["env_id"]
        episodes = meta["episodes"][:limit_per_task] if limit_per_task else meta["episodes"]
        cache = rendered_path(path, camera_size)
        with h5py.File(cache, "a") as out:
            dropped = set(out.attrs.get("dropped", []))
            todo = [e for e in episodes if f"traj_{e['episode_id']}" not in out and e["episode_id"] not in dropped]
            if todo:
                _render_into(out, path, meta, todo, camera_size, dropped)
            for e in episodes:
                key = f"traj_{e['episode_id']}"
                if key in out:
                    group = out[key]
                    images = {cam: np.asarray(group[cam]) for cam in CAMERA_KEYS if cam in group}
                    demos.append(Demo(task, np.asarray(group["state"]), np.asarray(group["actions"]), images))
        kept = sum(1 for d in demos if d.task == task)
        print(f"[demos] {task}: {kept} demos with {camera_size}-px cameras ({cache}; {len(episodes) - kept} dropped)")
    return demos


def _render_into(out, path: str, meta: dict, episodes: list, camera_size: int, dropped: set) -> None:
    import h5py
    from mani_skill.trajectory import utils as trajectory_utils
    from mani_skill.utils import common

    from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv

    task = meta["env_info"]["env_id"]
    control = meta["env_info"]["env_kwargs"]["control_mode"]
    config = ManiSkillConfig(
        tasks=[task], obs_mode="rgb", camera_size=camera_size, control_mode=control, max_episode_steps=10_000
    )
    env = ManiSkillTaskEnv(config)
    base = env.env.unwrapped
    try:
        with h5py.File(path, "r") as f:
            for n, episode in enumerate(episodes):
                group = f[f"traj_{episode['episode_id']}"]
                env.reset(seed=episode.get("episode_seed", episode.get("reset_kwargs", {}).get("seed")))
                first = trajectory_utils.index_dict(group["env_states"], 0)
                # The env's robot is "panda_wristcam" (it carries the hand camera): the
                # same arm as the demos' "panda", under its own name.
                own = list(base.get_state_dict()["articulations"])
                first["articulations"] = dict(zip(own, first["articulations"].values(), strict=True))
                base.set_state_dict(trajectory_utils.list_of_dicts_to_dict([first]))
                frames = [env.obs_format(common.unbatch(common.to_numpy(base.get_obs())))]
                actions = np.asarray(group["actions"], np.float32)
                success = False
                for action in actions:
                    obs, _, _, _, info = env.step(action)
                    frames.append(obs)
                    success = info["success"]
                if success:  # written under a temporary name, renamed when complete
                    name, tmp = f"traj_{episode['episode_id']}", f"partial_traj_{episode['episode_id']}"
                    if tmp in out:
                        del out[tmp]
                    traj = out.create_group(tmp)
                    traj.create_dataset("state", data=np.stack([o["state"] for o in frames]))
                    traj.create_dataset("actions", data=actions)
                    for cam in CAMERA_KEYS:
                        traj.create_dataset(cam, data=np.stack([o[cam] for o in frames]), compression="gzip")
                    out.move(tmp, name)
                else:
                    dropped.add(episode["episode_id"])
                    out.attrs["dropped"] = sorted(dropped)
                out.flush()
                if (n + 1) % 10 == 0 or n + 1 == len(episodes):
                    print(f"[demos] rendered {n + 1}/{len(episodes)} {task} demos at {camera_size} px", flush=True)
    finally:
        env.close()
