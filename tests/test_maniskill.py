"""ManiSkill3 envs on the CPU backend (needs scripts/setup_maniskill.sh; CI runs it)."""

import json
import os

import numpy as np
import pytest

from rllib_pirl.envs.maniskill import (
    SUITE,
    ManiSkillConfig,
    ManiSkillSetupError,
    _state_dim_of,
    check_task,
    make_maniskill_env,
    make_maniskill_task_makers,
    make_task_env,
    max_state_dim,
)

pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
pytestmark = pytest.mark.skipif(
    not os.environ.get("VK_ICD_FILENAMES") and not os.path.isdir("/usr/share/vulkan/icd.d"),
    reason="no Vulkan driver: run scripts/setup_maniskill.sh and source .vulkan/env.sh",
)


@pytest.mark.parametrize("task", SUITE)
def test_every_suite_task_resets_and_steps(task):
    env = make_maniskill_env({"task": task, "action_chunk": 5})
    try:
        obs, info = env.reset(seed=0)
        assert obs["state"].dtype == np.float32 and obs["task_id"].tolist() == [0]
        assert env.action_space.shape == (5, 4)
        obs2, reward, _terminated, _truncated, info = env.step(np.zeros((5, 4), np.float32))
        assert info["chunk_steps"] == 5 and info["task"] == task
        assert np.isfinite(reward) and not np.array_equal(obs["state"], obs2["state"])
    finally:
        env.close()


def test_rgb_observations_have_the_configured_shape():
    env = make_maniskill_env({"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 24, "action_chunk": 2})
    try:
        obs, _ = env.reset(seed=1)
        for cam in ("base_camera", "hand_camera"):
            assert obs[cam].shape == (24, 24, 3) and obs[cam].dtype == np.uint8
            assert env.observation_space[cam].shape == (24, 24, 3)
            assert obs[cam].max() > obs[cam].min()  # a rendered image, not a blank
        assert obs["state"].shape == env.observation_space["state"].shape
    finally:
        env.close()


def test_chunk_execution_sums_rewards_and_stops_at_truncation():
    # 7 steps per episode, chunks of 3: 3 + 3 + 1 steps, the last chunk stops at truncation.
    env = make_maniskill_env({"task": "PushCube-v1", "action_chunk": 3, "max_episode_steps": 7, "reward_mode": "dense"})
    single = make_task_env(ManiSkillConfig(tasks=["PushCube-v1"], max_episode_steps=7, reward_mode="dense"), 0).env
    try:
        env.reset(seed=3)
        single.reset(seed=3)
        rng = np.random.default_rng(0)
        steps = []
        for _ in range(3):
            chunk = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
            _, reward, terminated, truncated, info = env.step(chunk)
            expected = 0.0
            for a in chunk[: info["chunk_steps"]]:
                _, r, *_ = single.step(a)
                expected += r
            assert reward == pytest.approx(expected, abs=1e-5)
            steps.append(info["chunk_steps"])
        assert steps == [3, 3, 1] and truncated and not terminated
    finally:
        env.close()
        single.close()


@pytest.mark.parametrize("obs_mode", ["rgb", "state"])
def test_a_chunk_is_observed_once_and_equals_stepping_with_every_observation(obs_mode):
    """The inner steps of a chunk make no observation (a camera env renders once per chunk);
    observations, rewards, dones and infos equal those of an env observed at every step."""
    config = {"task": "PickCube-v1", "obs_mode": obs_mode, "camera_size": 16, "max_episode_steps": 7}
    env = make_maniskill_env({**config, "action_chunk": 3})
    single = make_task_env(ManiSkillConfig.from_env_config({**config, "action_chunk": 1}), 0).env
    inner = env.unwrapped.env.unwrapped  # the ManiSkill env under the chunked one
    captures = []
    capture = inner.capture_sensor_data
    inner.capture_sensor_data = lambda *a, **k: (captures.append(1), capture(*a, **k))[1]
    try:
        obs, _ = env.reset(seed=5)
        expected_obs, _ = single.reset(seed=5)
        captures.clear()
        rng = np.random.default_rng(1)
        for n_steps in (3, 3, 1):  # 7 steps: the last chunk stops at truncation
            chunk = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(chunk)
            expected = 0.0
            for a in chunk[:n_steps]:
                expected_obs, r, expected_term, expected_trunc, expected_info = single.step(a)
                expected += r
            assert info["chunk_steps"] == n_steps
            assert reward == pytest.approx(expected, abs=1e-6)
            assert (terminated, truncated) == (expected_term, expected_trunc)
            assert {k: info[k] for k in expected_info} == expected_info
            assert obs.keys() == expected_obs.keys()
            for key in obs:
                np.testing.assert_array_equal(obs[key], expected_obs[key], err_msg=key)
        assert truncated
        assert len(captures) == (3 if obs_mode == "rgb" else 0)  # once per chunk, not per step
    finally:
        env.close()
        single.close()


def test_pirl_reward_pays_increments_and_success_ends_the_episode():
    env = make_task_env(ManiSkillConfig(tasks=["PickCube-v1"]), 0).env  # unchunked task env
    try:
        env.reset(seed=0)
        potential = env._potential
        info = {"is_grasped": True, "success": False}
        assert env._pirl_potential(info) == pytest.approx(0.1)
        assert env._pirl_potential(info) == pytest.approx(0.2)  # grasp held for 2 steps
        assert env._pirl_potential({"is_grasped": True, "success": True}) == pytest.approx(1.2)
        assert env._pirl_potential({"is_grasped": False, "success": False}) == 0.0
        assert potential == 0.0
    finally:
        env.close()


def test_vector_env_keeps_terminal_observations_and_first_steps():
    """Next-step autoreset: the done step returns the real last observation; the next
    step returns the new episode's reset observation (reward 0) — checked against a
    single env stepped with the same seed and actions."""
    config = {"task": "PickCube-v1", "action_chunk": 2, "max_episode_steps": 4}
    venv = make_maniskill_env(dict(config, num_envs=2))
    single = make_maniskill_env(config)
    try:
        obs, _ = venv.reset(seed=11)
        ref, _ = single.reset(seed=11)
        assert np.allclose(obs["state"][0], ref["state"])
        rng = np.random.default_rng(1)
        for step in range(5):
            actions = rng.uniform(-1, 1, (2, 2, 4)).astype(np.float32)
            obs, reward, _terminated, truncated, _ = venv.step(actions)
            if step == 2:  # the autoreset step after the done at step 1
                ref, _ = single.reset()
                assert reward[0] == 0.0 and not truncated[0]
            else:
                ref, r, _, t, _ = single.step(actions[0])
                assert reward[0] == pytest.approx(r, abs=1e-5) and truncated[0] == t
            assert np.allclose(obs["state"][0], ref["state"], atol=1e-5), step
        assert not np.allclose(obs["state"][0], obs["state"][1])
    finally:
        venv.close()
        single.close()


def test_train_tasks_run_one_task_of_the_suite_under_its_suite_id_and_state_size():
    """RL on PlaceSphere alone from the suite's checkpoint: the policy must see the task id and
    padded state it was trained with in the suite; evaluation still covers every task."""
    config = {"tasks": "suite", "train_tasks": ["PlaceSphere-v1"], "max_episode_steps": 10}
    suite_id = SUITE.index("PlaceSphere-v1")
    venv = make_maniskill_env(dict(config, num_envs=2))
    try:
        obs, _ = venv.reset(seed=0)
        assert obs["task_id"].ravel().tolist() == [suite_id, suite_id]
        assert obs["state"].shape[1] == max_state_dim(ManiSkillConfig.from_env_config({"tasks": "suite"}))
        _, _, _, _, infos = venv.step(np.zeros(venv.action_space.shape, np.float32))
        assert list(infos["task"]) == ["PlaceSphere-v1"] * 2
    finally:
        venv.close()
    assert len(make_maniskill_task_makers(config)) == len(SUITE)
    with pytest.raises(ValueError, match="train_tasks must be a non-empty list of tasks of env_config.tasks"):
        ManiSkillConfig.from_env_config({"tasks": ["PickCube-v1"], "train_tasks": ["PlaceSphere-v1"]})


def test_bad_input_is_reported_clearly(tmp_path):
    with pytest.raises(ValueError, match="Unknown ManiSkill task 'PickCub-v1'.*PickCube-v1.*PushCube-v1"):
        check_task("PickCub-v1")
    with pytest.raises(ValueError, match="longer than max_episode_steps"):
        ManiSkillConfig.from_env_config({"task": "PickCube-v1", "action_chunk": 20, "max_episode_steps": 10})
    with pytest.raises(ValueError, match="camera_size must be an integer >= 1"):
        ManiSkillConfig.from_env_config({"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 0})
    with pytest.raises(ValueError, match="Unknown ManiSkill env_config key"):
        ManiSkillConfig.from_env_config({"task": "PickCube-v1", "obs_mod": "rgb"})
    env = make_maniskill_env({"task": "PickCube-v1", "action_chunk": 5})
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"shape \(5, 4\)"):
            env.step(np.zeros((4, 4)))
    finally:
        env.close()


def test_missing_assets_name_them_and_leave_no_empty_folder():
    from mani_skill.utils import assets

    source = assets.DATA_SOURCES["ycb"]
    folder = source.output_dir / source.target_path
    if folder.is_dir() and any(folder.iterdir()):
        pytest.skip("the ycb assets are present on this machine")
    folder.mkdir(parents=True, exist_ok=True)  # what a failed download leaves behind
    with pytest.raises(ManiSkillSetupError, match="needs downloaded assets: ycb.*download_asset PickSingleYCB-v1"):
        check_task("PickSingleYCB-v1")
    assert not folder.exists()


def test_demos_sft_and_an_rl_iteration_run_end_to_end(tmp_path, ray_session):
    """rllib demos → rllib sft → one Flow-SDE iteration from the SFT checkpoint."""
    from conftest import REPO  # noqa: F401

    from rllib_pirl import FlowSDEConfig
    from rllib_pirl.cli import main
    from rllib_pirl.demos import load_demos

    assert (
        main(["demos", "--task", "PickCube-v1", "--num", "2", "--out", str(tmp_path / "demos"), "--num-procs", "1"])
        == 0
    )
    demos = load_demos([str(tmp_path / "demos")])
    assert len(demos) == 2 and demos[0].obs.shape[1] == 42 and demos[0].actions.shape[1] == 4
    assert len(demos[0].obs) == len(demos[0].actions) + 1
    ckpt = tmp_path / "sft"
    assert (
        main(
            [
                "sft",
                "--demos",
                str(tmp_path / "demos"),
                "--out",
                str(ckpt),
                "--chunk",
                "4",
                "--steps",
                "20",
                "--hidden",
                "32,32",
            ]
        )
        == 0
    )
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    config = (
        FlowSDEConfig()
        .environment("ManiSkill", env_config={"task": "PickCube-v1", "max_episode_steps": 20})
        .training(action_chunk=4, train_batch_size_per_learner=32, minibatch_size=16, num_epochs=1, lr=1e-4)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .rl_module(model_config={"init_checkpoint": str(ckpt)})
    )
    algo = config.build_algo()
    try:
        from rllib_pirl.models.checkpoint import load_model

        sft = load_model(str(ckpt))
        loaded = algo.get_module().model.state_dict()
        assert all(torch_equal(v, loaded[k]) for k, v in sft.state_dict().items() if not k.startswith("noise_head"))
        result = algo.train()
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 32
    finally:
        algo.stop()


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def tiny_module(env):
    """A small random flow policy (chunk 5, K = 2) for the env's spaces."""
    import torch

    from rllib_pirl.rl_module import FlowRLModule

    torch.manual_seed(0)
    return FlowRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"action_chunk": 5, "num_denoise_steps": 2, "model_kwargs": {"hidden_sizes": (16, 16)}},
    )


def test_evaluation_writes_episode_videos_from_the_cameras(tmp_path):

    from rllib_pirl.evaluation import evaluate

    env = make_maniskill_env(
        {"task": "PushCube-v1", "obs_mode": "rgb", "camera_size": 32, "action_chunk": 5, "max_episode_steps": 10}
    )
    try:
        module = tiny_module(env)
        result = evaluate(module, env, 2, seed=5, video_dir=str(tmp_path), video_episodes=1)
    finally:
        env.close()
    assert result.lengths == [2, 2] and result.tasks == ["PushCube-v1"] * 2
    videos = list(tmp_path.glob("PushCube-v1_episode_5_*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    import imageio

    frames = imageio.mimread(videos[0])
    assert len(frames) == 3 and frames[0].shape == (32, 64, 3)  # two cameras side by side


def test_evaluate_reports_every_task_of_a_suite(tmp_path, capsys):
    """`rllib evaluate` on a suite runs the episodes on each task (same seeds) and
    prints per-task success with intervals."""

    from rllib_pirl.cli import main
    from rllib_pirl.models.checkpoint import save_model

    env_config = {"tasks": ["PickCube-v1", "PushCube-v1"], "action_chunk": 5, "max_episode_steps": 10}
    env = make_maniskill_env(env_config)
    try:
        module = tiny_module(env)
    finally:
        env.close()
    save_model(module.model, str(tmp_path / "model"))
    args = ["evaluate", str(tmp_path / "model"), "--env", "ManiSkill", "--episodes", "2"]
    assert main([*args, "--env-config", json.dumps(env_config)]) == 0
    out = capsys.readouterr().out
    assert "per task (2 tasks)" in out and "episodes: 4" in out
    assert "PickCube-v1: success" in out and "PushCube-v1: success" in out


@pytest.mark.parametrize("reward_mode", ["dense", "pirl"])
def test_batched_backend_converts_to_next_step_autoreset(reward_mode):
    """The GPU backend's vector env, run on ManiSkill's CPU simulation with one env (the
    same code; a GPU runs hundreds): chunk rewards and the first episode match the
    single CPU env step by step; the step that ends an episode returns its final
    observation; the next returns the new episode's first observation (reward 0, no
    done, the simulator at step 0 of that episode) and ignores its action."""
    from rllib_pirl.envs.maniskill_batched import ManiSkillBatchedVectorEnv

    config = ManiSkillConfig(tasks=["PushCube-v1"], action_chunk=3, max_episode_steps=7, reward_mode=reward_mode)
    config.state_dim = _state_dim_of("PushCube-v1")
    batched = ManiSkillBatchedVectorEnv(config, num_envs=1, sim_backend="physx_cpu")
    single = make_task_env(config, 0)
    try:
        assert batched.single_observation_space == single.observation_space
        assert batched.action_space.shape == (1, 3, 4)
        obs, _ = batched.reset(seed=3)
        s_obs, _ = single.reset(seed=3)
        np.testing.assert_allclose(obs["state"][0], s_obs["state"], atol=1e-5)
        rng = np.random.default_rng(0)
        for expected_steps in (3, 3, 1):  # 7 steps: the last chunk stops at truncation
            chunk = rng.uniform(-1, 1, (1, 3, 4)).astype(np.float32)
            obs, reward, terminated, truncated, info = batched.step(chunk)
            s_obs, s_reward, s_term, s_trunc, s_info = single.step(chunk[0])
            assert info["chunk_steps"][0] == s_info["chunk_steps"] == expected_steps
            assert reward[0] == pytest.approx(s_reward, abs=1e-4)
            np.testing.assert_allclose(obs["state"][0], s_obs["state"], atol=1e-4)
            assert (terminated[0], truncated[0]) == (s_term, s_trunc)
        assert truncated[0] and not terminated[0]
        final = obs["state"][0].copy()
        obs, reward, terminated, truncated, info = batched.step(rng.uniform(-1, 1, (1, 3, 4)).astype(np.float32))
        assert reward[0] == 0.0 and not terminated[0] and not truncated[0] and info["chunk_steps"][0] == 0
        base = batched.env.unwrapped
        assert int(base.elapsed_steps[0]) == 0  # the new episode has not moved yet
        np.testing.assert_allclose(obs["state"][0], batched._format(base.get_obs())["state"][0], atol=1e-6)
        assert not np.allclose(obs["state"][0], final)
        _, _, _, _, info = batched.step(np.zeros((1, 3, 4), np.float32))
        assert info["chunk_steps"][0] == 3 and int(base.elapsed_steps[0]) == 3
    finally:
        batched.close()
        single.close()


def test_batched_backend_rejects_a_suite():
    from rllib_pirl.envs.maniskill_batched import ManiSkillBatchedVectorEnv

    with pytest.raises(ValueError, match="one task per process"):
        ManiSkillBatchedVectorEnv(ManiSkillConfig(tasks=list(SUITE)), num_envs=4)


def test_pi0_sft_on_rendered_demos_then_an_rl_iteration(tmp_path, ray_session):
    """rllib demos → rllib sft --model pi0 (demos re-rendered with the env's cameras,
    cached) → a Flow-Noise iteration of the tiny π0 from that checkpoint."""
    import h5py

    from rllib_pirl import FlowNoiseConfig
    from rllib_pirl.cli import main
    from rllib_pirl.demos import demo_files, render_demos, rendered_path

    demos = str(tmp_path / "demos")
    assert main(["demos", "--task", "PickCube-v1", "--num", "2", "--out", demos, "--num-procs", "1"]) == 0
    tokenizer = str(tmp_path / "tok.model")
    assert main(["tokenizer", "--out", tokenizer]) == 0
    ckpt = tmp_path / "pi0"
    args = ["sft", "--demos", demos, "--out", str(ckpt), "--model", "pi0", "--tokenizer", tokenizer]
    assert main([*args, "--camera-size", "24", "--chunk", "4", "--steps", "3", "--batch-size", "4"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.model", "rl_heads.safetensors"} <= set(os.listdir(ckpt))
    cache = rendered_path(demo_files([demos])[0], 24)
    with h5py.File(cache) as f:
        assert len([k for k in f if k.startswith("traj_")]) == 2 and f["traj_0/base_camera"].shape[1:] == (24, 24, 3)
    rendered = render_demos([demos], 24)  # from the cache
    assert len(rendered) == 2 and rendered[0].images["hand_camera"].shape[0] == len(rendered[0].actions) + 1

    env_config = {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 24, "max_episode_steps": 12}
    config = (
        FlowNoiseConfig()
        .environment("ManiSkill", env_config=env_config)
        .training(action_chunk=4, num_denoise_steps=2, train_batch_size_per_learner=8, minibatch_size=4, num_epochs=1)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .rl_module(model_config={"init_checkpoint": str(ckpt)})
    )
    algo = config.build_algo()
    try:
        model = algo.get_module().model
        assert type(model).__name__ == "PiPolicy" and model.train_expert_only
        result = algo.train()
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0
    finally:
        algo.stop()


def test_batched_env_closes_after_a_failed_construction():
    """gymnasium's __del__ closes a vector env whose constructor raised: no AttributeError."""
    from rllib_pirl.envs.maniskill_batched import ManiSkillBatchedVectorEnv

    config = ManiSkillConfig.from_env_config({"tasks": ["PickCube-v1", "PushCube-v1"]})
    env = ManiSkillBatchedVectorEnv.__new__(ManiSkillBatchedVectorEnv)
    with pytest.raises(ValueError, match="one task per process"):
        env.__init__(config, 2)
    env.close()
    assert env.closed
