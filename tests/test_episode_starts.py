"""Where episodes start: SFT frames, evaluations and RL see the same first observation.

Rendered camera demos start at the env's own reset (the wrist included), no reset
carries a grasp or a success over from the previous episode, and evaluations count
no success before the first action. ManiSkill cases need scripts/setup_maniskill.sh.
"""

import json
import os
import shutil

import gymnasium as gym
import numpy as np
import pytest

from rllib_pirl.envs.chunking import ActionChunkWrapper
from rllib_pirl.envs.point_reach import PointReachEnv
from rllib_pirl.evaluation import evaluate
from rllib_pirl.rl_module import FlowRLModule

CAMERA = 24
WRIST = 6  # panda_joint7 in the proprioceptive state (qpos first)

maniskill = pytest.mark.skipif(
    not os.environ.get("VK_ICD_FILENAMES") and not os.path.isdir("/usr/share/vulkan/icd.d"),
    reason="no Vulkan driver: run scripts/setup_maniskill.sh and source .vulkan/env.sh",
)


class SolvedAtReset(gym.Wrapper):
    """PointReach whose reset info says success (as a stale simulator flag would); no
    step succeeds (the goal is out of reach within the step limit)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "success": True}

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(action)
        return obs, reward, False, truncated, {**info, "success": False}


def test_evaluation_counts_no_success_before_the_first_action():
    env = ActionChunkWrapper(gym.wrappers.TimeLimit(SolvedAtReset(PointReachEnv()), 4), 2)
    module = FlowRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"action_chunk": 2, "num_denoise_steps": 2, "model_kwargs": {"hidden_sizes": (8,)}},
    )
    result = evaluate(module, env, 3, seed=0)
    assert result.successes == [False] * 3 and result.lengths == [2] * 3


# -- ManiSkill ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Two PickCube motion-planning demos (state, pd_ee_delta_pos) made by `rllib demos`."""
    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    from rllib_pirl.cli import main

    out = tmp_path_factory.mktemp("demos")
    assert main(["demos", "--task", "PickCube-v1", "--num", "2", "--out", str(out), "--num-procs", "1"]) == 0
    return str(out)


def _state_file(folder):
    from rllib_pirl.demos import demo_files

    (path,) = demo_files([folder])
    return path


def _seeds(path):
    from rllib_pirl.demos import demo_meta

    return [e["episode_seed"] for e in demo_meta(path)["episodes"]]


def _camera_env(max_episode_steps=100, obs_mode="rgb"):
    from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv

    config = ManiSkillConfig(
        tasks=["PickCube-v1"], obs_mode=obs_mode, camera_size=CAMERA, max_episode_steps=max_episode_steps
    )
    return ManiSkillTaskEnv(config)


@maniskill
def test_a_state_demo_starts_with_the_env_reset_of_its_seed(demos):
    """`rllib demos` replaces the first observation ManiSkill's replay wrote (with the
    previous episode's contacts) by the env's reset with the demo's seed."""
    import h5py

    from rllib_pirl.demos import load_demos
    from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv

    path = _state_file(demos)
    with h5py.File(path) as f:
        assert f.attrs["first_obs_refreshed"]
    env = ManiSkillTaskEnv(ManiSkillConfig(tasks=["PickCube-v1"]))
    try:
        for demo, seed in zip(load_demos([demos]), _seeds(path), strict=True):
            obs, _ = env.reset(seed=seed)
            np.testing.assert_array_equal(demo.obs[0], obs["state"])
    finally:
        env.close()


@maniskill
@pytest.mark.parametrize("obs_mode", ["rgb", "state+rgb"])
def test_a_rendered_demo_starts_with_the_env_reset_of_its_seed(demos, obs_mode):
    """Frame 0 of every rendered demo equals a fresh env's reset with the demo's seed:
    state (the wrist joint at panda_wristcam's −π/4; proprioception, or with "state+rgb"
    the task's full state) and both cameras."""
    import h5py

    from rllib_pirl.demos import RENDER_VERSION, render_demos, rendered_path

    rendered = render_demos([demos], CAMERA, obs_mode=obs_mode)
    path = _state_file(demos)
    assert len(rendered) == 2
    assert rendered[0].obs.shape[1] == {"rgb": 29, "state+rgb": 42}[obs_mode]  # PickCube: + cube pose and offsets
    with h5py.File(rendered_path(path, CAMERA, obs_mode)) as f:
        assert f.attrs["render_version"] == RENDER_VERSION
    env = _camera_env(obs_mode=obs_mode)
    try:
        for demo, seed in zip(rendered, _seeds(path), strict=True):
            obs, _ = env.reset(seed=seed)
            np.testing.assert_array_equal(demo.obs[0], obs["state"])
            for cam in ("base_camera", "hand_camera"):
                np.testing.assert_array_equal(demo.images[cam][0], obs[cam])
            assert demo.obs[0][WRIST] == pytest.approx(-np.pi / 4, abs=0.1)
    finally:
        env.close()


@maniskill
def test_a_render_cache_of_an_older_version_is_rendered_again(demos, tmp_path, capsys):
    import h5py

    from rllib_pirl.demos import render_demos, rendered_path

    folder = tmp_path / "demos"
    shutil.copytree(demos, folder)
    fresh = render_demos([str(folder)], CAMERA)
    cache = rendered_path(_state_file(str(folder)), CAMERA)
    with h5py.File(cache, "a") as f:  # what version 1 left: no version, a rotated wrist
        del f.attrs["render_version"]
        f["traj_0/state"][0, WRIST] += np.pi / 2
    capsys.readouterr()
    again = render_demos([str(folder)], CAMERA)
    assert "rendered by render version 1" in capsys.readouterr().out
    for a, b in zip(fresh, again, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.images["hand_camera"], b.images["hand_camera"])
    with h5py.File(cache) as f:
        assert not [k for k in f if not k.startswith("traj_")]  # no half-written episode left


@maniskill
def test_rendering_in_two_processes_gives_the_same_demos(demos, tmp_path, monkeypatch):
    """Rendering split between two processes gives the demos of one process (up to PhysX's
    memory of the previous episode); the finished cache can be read by several processes
    at once, and one still to render is refused while another process holds it."""
    from rllib_pirl import demos as demos_module

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(demos, one)
    shutil.copytree(demos, two)
    monkeypatch.setattr(demos_module, "RENDER_SHARE", 1)  # a share per demo: one per process
    alone = demos_module.render_demos([str(one)], CAMERA)
    split = demos_module.render_demos([str(two)], CAMERA, num_procs=2)
    assert len(split) == len(alone) == 2
    # Demo 0 comes first in a fresh env either way: identical.
    np.testing.assert_array_equal(alone[0].obs, split[0].obs)
    for cam in ("base_camera", "hand_camera"):
        np.testing.assert_array_equal(alone[0].images[cam], split[0].images[cam])
    # Demo 1 ran after demo 0 (which ends holding the cube) in one process and first in a
    # fresh env in the other: PhysX carries something of an episode that ended in a grasp
    # into the next (not in the state dict; from the second step on, ~1e-4 in the state,
    # sub-pixel edges in the images), so equal starts and close trajectories.
    np.testing.assert_array_equal(alone[1].obs[0], split[1].obs[0])
    np.testing.assert_array_equal(alone[1].actions, split[1].actions)
    np.testing.assert_allclose(alone[1].obs, split[1].obs, atol=1e-3)
    for cam in ("base_camera", "hand_camera"):
        np.testing.assert_array_equal(alone[1].images[cam][0], split[1].images[cam][0])
        assert (alone[1].images[cam] != split[1].images[cam]).mean() < 0.05

    # A complete cache serves a training while another process reads it; one with demos
    # left to render, held open by another process, is refused with a message.
    import subprocess
    import sys

    import h5py

    cache = demos_module.rendered_path(_state_file(str(two)), CAMERA)
    hold = "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, cache], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert len(demos_module.render_demos([str(two)], CAMERA)) == 2
    finally:
        holder.kill()
        holder.wait()
    with h5py.File(cache, "a") as f:
        del f["traj_1"]
    holder = subprocess.Popen([sys.executable, "-c", hold, cache], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ValueError, match="being rendered by another process"):
            demos_module.render_demos([str(two)], CAMERA)
    finally:
        holder.kill()
        holder.wait()


@maniskill
def test_demos_the_camera_env_cannot_reproduce_are_refused(demos, tmp_path):
    import h5py

    from rllib_pirl.demos import render_demos

    moved = tmp_path / "moved"
    shutil.copytree(demos, moved)
    with h5py.File(_state_file(str(moved)), "a") as f:
        f["traj_0/env_states/actors/cube"][0, 0] += 0.05
    with pytest.raises(ValueError, match="puts 'cube' 0.0500 away from the recorded start"):
        render_demos([str(moved)], CAMERA)

    other = tmp_path / "other_robot"
    shutil.copytree(demos, other)
    meta_path = os.path.splitext(_state_file(str(other)))[0] + ".json"
    with open(meta_path) as f:
        meta = json.load(f)
    meta["env_info"]["env_kwargs"]["robot_uids"] = "xarm6_robotiq"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="robot 'xarm6_robotiq'.*panda / panda_wristcam"):
        render_demos([str(other)], CAMERA)
    with pytest.raises(ValueError, match="obs_mode must be one of"):
        render_demos([demos], CAMERA, obs_mode="depth")


def _replay_until_it_holds_the_cube(env, demos):
    """Replay demo 0 (an action per env step): it ends holding the cube at the goal."""
    import h5py

    path = _state_file(demos)
    with h5py.File(path) as f:
        actions = np.asarray(f["traj_0/actions"])
    env.reset(seed=_seeds(path)[0])
    for action in actions:
        *_, terminated, _, info = env.step(action)
        if terminated:
            break
    base = env.env.unwrapped
    assert info["success"] and bool(base.agent.is_grasping(base.cube))


@maniskill
@pytest.mark.parametrize("obs_mode", ["state", "rgb"])
def test_no_reset_carries_a_grasp_over(demos, obs_mode):
    """After an episode that ended holding the cube, the next reset is a fresh env's
    reset: same observation (obs_mode state carries is_grasped), no success, and the
    pirl reward does not take back a grasp bonus the episode never earned."""
    from rllib_pirl.envs.maniskill import ManiSkillConfig, ManiSkillTaskEnv

    config = ManiSkillConfig(tasks=["PickCube-v1"], obs_mode=obs_mode, camera_size=CAMERA, max_episode_steps=200)
    used, fresh = ManiSkillTaskEnv(config), ManiSkillTaskEnv(config)
    try:
        _replay_until_it_holds_the_cube(used, demos)
        obs, info = used.reset(seed=123)
        expected, _ = fresh.reset(seed=123)
        for key in expected:
            np.testing.assert_array_equal(obs[key], expected[key])
        assert not info["success"]
        _, reward, *_ = used.step(np.zeros(4, np.float32))
        _, expected_reward, *_ = fresh.step(np.zeros(4, np.float32))
        assert reward == expected_reward == 0.0
    finally:
        used.close()
        fresh.close()


@maniskill
def test_the_batched_backend_starts_each_episode_at_zero_potential(demos):
    """ManiSkill's batched backend (physx_cpu here): the autoreset after an episode that
    ended grasping pays no −0.1 at the new episode's first step."""
    import h5py

    from rllib_pirl.envs.maniskill import ManiSkillConfig
    from rllib_pirl.envs.maniskill_batched import ManiSkillBatchedVectorEnv

    path = _state_file(demos)
    with h5py.File(path) as f:
        actions = np.asarray(f["traj_0/actions"])
    config = ManiSkillConfig(tasks=["PickCube-v1"], action_chunk=1, max_episode_steps=200)
    env = ManiSkillBatchedVectorEnv(config, num_envs=1, sim_backend="physx_cpu")
    try:
        env.reset(seed=_seeds(path)[0])
        for action in actions:
            _, _, terminated, _, info = env.step(action[None, None])
            if terminated[0]:
                break
        assert info["success"][0]
        _, reward, terminated, _, _ = env.step(np.zeros((1, 1, 4), np.float32))  # the autoreset
        assert reward[0] == 0.0 and not terminated[0]
        _, reward, *_ = env.step(np.zeros((1, 1, 4), np.float32))
        assert reward[0] == 0.0
    finally:
        env.close()
