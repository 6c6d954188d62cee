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
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

MOTION_PLANNING = "mani_skill.examples.motionplanning.panda.run"
REPLAY = "mani_skill.trajectory.replay_trajectory"
TRAJ_NAME = "demos"
CAMERA_KEYS = ("base_camera", "hand_camera")
#: Version of the camera renders :func:`render_demos` keeps; a cache of another version
#: is rendered again. 2: frame 0 is the env's own reset (version 1 copied the demo's
#: robot, whose wrist joint rests at +π/4 where the env's panda_wristcam rests at −π/4:
#: SFT saw a wrist and a hand camera no evaluation starts with).
RENDER_VERSION = 2
#: Robots the demos may be recorded with: ManiSkill's panda, whose arm the env's
#: panda_wristcam (the panda with a hand camera) reproduces apart from the wrist's rest.
DEMO_ROBOTS = ("panda", "panda_wristcam")
WRIST_JOINT = 6  # panda_joint7
START_TOLERANCE = 1e-4  # poses and joint positions of a demo's start vs the env's reset
RENDER_SHARE = 10  # demo episodes a rendering process replays per share
RENDER_OBS_MODES = ("rgb", "state+rgb")  # env obs modes demos are rendered in


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
    _refresh_first_observations(converted)
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


def _refresh_first_observations(path: str) -> None:
    """Replace each converted episode's first observation by the env's reset with its seed
    (the recorded start checked against it first). ManiSkill's replay sets each episode's
    first state without a physics step, so its first observation keeps the previous
    episode's contacts (``is_grasped`` = 1 after a demo that ended holding the object):
    SFT would learn from a first observation no evaluation starts with. Marks the file
    ``first_obs_refreshed``."""
    import h5py

    from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv

    meta = demo_meta(path)
    control = meta["env_info"]["env_kwargs"]["control_mode"]
    env = ManiSkillTaskEnv(ManiSkillConfig(tasks=[meta["env_info"]["env_id"]], control_mode=control))
    try:
        with h5py.File(path, "r+") as f:
            for episode in meta["episodes"]:
                group = f[f"traj_{episode['episode_id']}"]
                group["obs"][0] = _reset_at_demo_start(env, path, episode, group)["state"]
            f.attrs["first_obs_refreshed"] = True
    finally:
        env.close()


def demo_meta(path: str) -> dict:
    """The .json beside a ManiSkill trajectory file (env_info, episodes with their seeds)."""
    with open(os.path.splitext(path)[0] + ".json") as f:
        return json.load(f)


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
        meta = demo_meta(path)
        task = meta["env_info"]["env_id"]
        if meta["env_info"]["env_kwargs"].get("obs_mode") != "state":
            raise ValueError(f"{path}: demos need state observations (obs_mode 'state'), replay with -o state.")
        with h5py.File(path, "r") as f:
            if not f.attrs.get("first_obs_refreshed", False):
                print(
                    f"[demos] {path}: made before first observations were refreshed (an episode's first "
                    "observation may carry the previous one's grasp flag); remake with `rllib demos`.",
                    flush=True,
                )
            for episode in meta["episodes"]:
                if limit_per_task is not None and counts.get(task, 0) >= limit_per_task:
                    break
                group = f[f"traj_{episode['episode_id']}"]
                demos.append(Demo(task, np.asarray(group["obs"], np.float32), np.asarray(group["actions"], np.float32)))
                counts[task] = counts.get(task, 0) + 1
    return demos


def rendered_path(path: str, camera_size: int, obs_mode: str = "rgb") -> str:
    """Where :func:`render_demos` keeps the camera version of a converted demo file:
    ``demos.rgbSIZE.CONTROL.physx_cpu.h5`` beside it (``traj_N/{state, base_camera,
    hand_camera, actions}``; episodes that failed on replay listed in the ``dropped``
    attribute; ``render_version`` and the state file's ``source_sha256``)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, name.replace(".state.", f".{obs_mode.replace('+', '')}{camera_size}.", 1))


def render_demos(
    paths: Sequence[str],
    camera_size: int,
    limit_per_task: int | None = None,
    num_procs: int = 1,
    obs_mode: str = "rgb",
) -> list[Demo]:
    """Re-run state demos in rllib_pirl's own ManiSkill env with cameras (obs_mode "rgb",
    ``camera_size`` px): each episode starts from the env's reset with the demo's seed
    (checked to be the demo's recorded start, see :func:`_check_start`) and replays its
    actions, so observations are exactly what the RL env and evaluations produce. An
    episode that does not end in success on replay is dropped (and counted). Rendered
    episodes are kept in :func:`rendered_path` and reused; a cache of another
    :data:`RENDER_VERSION` is rendered again. ``num_procs`` > 1 renders in that many
    processes (software rendering takes one core each). ``obs_mode``: the env's "rgb"
    (state = proprioception) or "state+rgb" (state = the task's full state, object poses
    included: a π0 that need not find the object in the images, a control for vision)."""
    if obs_mode not in RENDER_OBS_MODES:
        raise ValueError(f"obs_mode must be one of {RENDER_OBS_MODES} to render demos with cameras, got {obs_mode!r}")

    demos: list[Demo] = []
    for path in demo_files(paths):
        meta = demo_meta(path)
        task = meta["env_info"]["env_id"]
        robot = meta["env_info"]["env_kwargs"].get("robot_uids", "panda")
        if robot not in DEMO_ROBOTS:
            raise ValueError(
                f"{path}: demos recorded with the robot {robot!r}; the camera env runs ManiSkill's panda_wristcam, "
                f"which reproduces only {' / '.join(DEMO_ROBOTS)}. Make the demos with `rllib demos`."
            )
        episodes = meta["episodes"][:limit_per_task] if limit_per_task else meta["episodes"]
        cache = rendered_path(path, camera_size, obs_mode)
        digest = _file_digest(path)
        _drop_outdated(cache, digest)
        todo = _episodes_to_render(cache, episodes)
        if todo:  # opened for writing only then: several trainings may share a finished cache
            with _open_cache(cache, "a") as out:
                out.attrs["render_version"], out.attrs["source_sha256"] = RENDER_VERSION, digest
                dropped = set(out.attrs.get("dropped", []))
                _render_into(out, path, meta, todo, camera_size, dropped, num_procs, obs_mode)
        with _open_cache(cache, "r") as f:
            for e in episodes:
                key = f"traj_{e['episode_id']}"
                if key in f:
                    group = f[key]
                    images = {cam: np.asarray(group[cam]) for cam in CAMERA_KEYS if cam in group}
                    demos.append(Demo(task, np.asarray(group["state"]), np.asarray(group["actions"]), images))
        kept = sum(1 for d in demos if d.task == task)
        print(f"[demos] {task}: {kept} demos with {camera_size}-px cameras ({cache}; {len(episodes) - kept} dropped)")
    return demos


def _episodes_to_render(cache: str, episodes: list) -> list:
    """The ``episodes`` neither in the render cache nor dropped from it (read-only)."""
    if not os.path.exists(cache):
        return list(episodes)
    with _open_cache(cache, "r") as f:
        dropped = set(f.attrs.get("dropped", []))
        return [e for e in episodes if f"traj_{e['episode_id']}" not in f and e["episode_id"] not in dropped]


def _open_cache(cache: str, mode: str):
    import h5py

    try:
        return h5py.File(cache, mode)
    except BlockingIOError:
        raise ValueError(
            f"{cache} is being rendered by another process (HDF5 file lock). Wait until it is done (it then "
            "serves any number of trainings at once), or render into another copy of the demos."
        ) from None


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _drop_outdated(cache: str, source_digest: str) -> None:
    """Delete a render cache of another :data:`RENDER_VERSION` or of other source demos
    (saying so): it is rendered again rather than mixed with new renders."""

    if not os.path.exists(cache):
        return
    with _open_cache(cache, "r") as f:
        version, source = f.attrs.get("render_version", 1), f.attrs.get("source_sha256")
    if version != RENDER_VERSION:
        why = f"render version {version} (now {RENDER_VERSION}: frame 0 is the env's own reset, the wrist included)"
    elif source != source_digest:
        why = "other demos (the state demo file changed since)"
    else:
        return
    print(f"[demos] {cache} was rendered by {why}; rendering again", flush=True)
    os.remove(cache)


def _reset_at_demo_start(env, path: str, episode: dict, group) -> dict:
    """Reset ``env`` (a :class:`ManiSkillTaskEnv`) with the demo episode's seed and return
    its first observation, after :func:`_check_start` found the recorded start there."""
    from mani_skill.trajectory import utils as trajectory_utils

    seed = episode.get("episode_seed", episode.get("reset_kwargs", {}).get("seed"))
    if seed is None:
        raise ValueError(
            f"{path}, episode {episode['episode_id']}: no seed recorded; make the demos with `rllib demos`."
        )
    obs, _ = env.reset(seed=seed)
    start = trajectory_utils.index_dict(group["env_states"], 0)
    _check_start(path, episode, start, env.env.unwrapped.get_state_dict())
    return obs


def _check_start(path: str, episode: dict, recorded: dict, reset: dict) -> None:
    """The demo's recorded first env state must be where the env's reset with its seed
    starts: actor poses and the robot's pose and joints within
    :data:`START_TOLERANCE`, except the wrist joint (panda and panda_wristcam rest it
    differently; the end-effector control never turns it) and velocities."""
    for name, state in recorded["actors"].items():
        off = np.abs(np.asarray(state)[..., :7] - np.asarray(reset["actors"][name])[..., :7]).max()
        if off > START_TOLERANCE:
            raise ValueError(
                f"{path}, episode {episode['episode_id']}: the env's reset with the demo's seed puts {name!r} "
                f"{off:.4f} away from the recorded start; the demos were made with another ManiSkill version or task "
                "settings. Make them again with `rllib demos`."
            )
    (demo_robot,), (env_robot,) = recorded["articulations"].values(), reset["articulations"].values()
    demo_robot, env_robot = np.asarray(demo_robot).reshape(-1), np.asarray(env_robot).reshape(-1)
    dof = (len(env_robot) - 13) // 2  # pose 7, velocity 6, joint positions, joint velocities
    keep = np.ones(7 + dof, bool)
    keep[7 + WRIST_JOINT] = False
    pose_and_joints = np.r_[0:7, 13 : 13 + dof]
    off = np.abs(demo_robot[pose_and_joints] - env_robot[pose_and_joints])[keep].max()
    if off > START_TOLERANCE:
        raise ValueError(
            f"{path}, episode {episode['episode_id']}: the demo's robot starts {off:.4f} (rad or m) away from the "
            "env's reset with the same seed: it was recorded with a robot or start the camera env cannot reproduce. "
            "Make the demos with `rllib demos`."
        )


def _render_into(
    out, path: str, meta: dict, episodes: list, camera_size: int, dropped: set, num_procs: int, obs_mode: str
) -> None:
    """Render ``episodes`` in shares of :data:`RENDER_SHARE` (in ``num_procs`` processes
    when more than one) and write each share's successful episodes into ``out`` as it
    arrives, in order; an interrupted render resumes from the last complete share."""
    task = meta["env_info"]["env_id"]
    shares = [episodes[i : i + RENDER_SHARE] for i in range(0, len(episodes), RENDER_SHARE)]
    args = [(path, meta, share, camera_size, obs_mode) for share in shares]
    pool = None
    if num_procs > 1 and len(shares) > 1:
        pool = ProcessPoolExecutor(min(num_procs, len(shares)), mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_render_share, *zip(*args))
    else:
        results = (_render_share(*a) for a in args)
    done = 0
    try:
        for rendered in results:
            for episode_id, episode in rendered:
                if episode is None:
                    dropped.add(episode_id)
                    out.attrs["dropped"] = sorted(dropped)
                else:  # written under a temporary name, renamed when complete
                    name, tmp = f"traj_{episode_id}", f"partial_traj_{episode_id}"
                    if tmp in out:
                        del out[tmp]
                    traj = out.create_group(tmp)
                    for key, data in episode.items():
                        traj.create_dataset(key, data=data, compression="gzip" if key in CAMERA_KEYS else None)
                    out.move(tmp, name)
            out.flush()
            done += len(rendered)
            print(f"[demos] rendered {done}/{len(episodes)} {task} demos at {camera_size} px", flush=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        else:
            _close_render_envs()


_RENDER_ENVS: dict = {}  # camera envs of this process, by (task, control mode, camera size, obs mode)


def _close_render_envs() -> None:
    while _RENDER_ENVS:
        _RENDER_ENVS.popitem()[1].close()


def _render_share(
    path: str, meta: dict, episodes: list, camera_size: int, obs_mode: str
) -> list[tuple[int, dict | None]]:
    """Replay demo episodes in this process's camera env: ``(episode id, {state, actions,
    cameras} or None where the replay does not end in success)`` per episode."""
    import h5py

    from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv

    task, control = meta["env_info"]["env_id"], meta["env_info"]["env_kwargs"]["control_mode"]
    key = (task, control, camera_size, obs_mode)
    if key not in _RENDER_ENVS:
        config = ManiSkillConfig(
            tasks=[task], obs_mode=obs_mode, camera_size=camera_size, control_mode=control, max_episode_steps=10_000
        )
        _RENDER_ENVS[key] = ManiSkillTaskEnv(config)
    env = _RENDER_ENVS[key]
    rendered = []
    with h5py.File(path, "r") as f:
        for episode in episodes:
            group = f[f"traj_{episode['episode_id']}"]
            frames = [_reset_at_demo_start(env, path, episode, group)]
            actions = np.asarray(group["actions"], np.float32)
            success = False
            for action in actions:
                obs, _, _, _, info = env.step(action)
                frames.append(obs)
                success = info["success"]
            data = {"state": np.stack([o["state"] for o in frames]), "actions": actions}
            data.update({cam: np.stack([o[cam] for o in frames]) for cam in CAMERA_KEYS})
            rendered.append((episode["episode_id"], data if success else None))
    return rendered
