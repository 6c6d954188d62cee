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


@dataclass
class Demo:
    task: str
    obs: np.ndarray  # (T + 1, state_dim)
    actions: np.ndarray  # (T, action_dim)


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


def demo_files(paths: Sequence[str]) -> list[str]:
    """.h5 files named directly or found (converted state demos) under folders."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "**", "*.state.*.h5"), recursive=True))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"No demo file or folder {path}")
    if not files:
        raise FileNotFoundError(f"No converted demos (*.state.*.h5) under {list(paths)}; make them with `rllib demos`.")
    return files


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
