"""Surviving crashes: a dead simulator process, an env that raises, with the env runner local."""

import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest

from rllib_pirl.envs.workers import RESTARTED, RestartingAsyncVectorEnv


class RaisesOnce(gym.Wrapper):
    """CartPole whose step raises when the file ``flag`` exists (and removes it)."""

    def __init__(self, flag):
        super().__init__(gym.make("CartPole-v1"))
        self.flag = flag

    def step(self, action):
        if os.path.exists(self.flag):
            os.remove(self.flag)
            raise RuntimeError("the simulator broke")
        return self.env.step(action)


def make_env(flag, index):
    return RaisesOnce(flag if index == 1 else os.devnull + ".none")


def vector_env(flag, shared_memory=True):
    fns = [lambda i=i: make_env(flag, i) for i in range(3)]
    return RestartingAsyncVectorEnv(fns, context="forkserver", shared_memory=shared_memory)


@pytest.mark.parametrize("shared_memory", [True, False])
def test_a_killed_simulator_process_ends_its_episode_truncated_and_its_next_episode_starts(tmp_path, shared_memory):
    env = vector_env(str(tmp_path / "flag"), shared_memory)
    try:
        env.reset(seed=0)
        actions = np.zeros(3, dtype=np.int64)
        for _ in range(3):
            env.step(actions)
        os.kill(env.processes[1].pid, signal.SIGKILL)  # between steps (the policy's turn)
        time.sleep(0.5)
        obs, reward, terminated, truncated, info = env.step(actions)
        assert list(truncated) == [False, True, False] and reward[1] == 0 and not terminated[1]
        assert info[RESTARTED][1] and env.restarts == 1
        start = obs[1].copy()
        assert np.all(np.abs(start) <= 0.05)  # CartPole's reset state, from the new process
        obs, reward, terminated, truncated, info = env.step(actions)  # next-step autoreset: the new episode
        assert np.array_equal(obs[1], start) and reward[1] == 0 and not truncated[1]
        obs, reward, *_ = env.step(actions)  # and then it steps again
        assert reward[1] == 1.0 and not np.array_equal(obs[1], start)
        os.kill(env.processes[2].pid, signal.SIGKILL)  # while it steps: killed, then the step is waited for
        env.step_async(actions)
        _, _, _, truncated, info = env.step_wait()
        assert truncated[2] and info[RESTARTED][2] and env.restarts == 2
    finally:
        env.close()


def test_an_env_that_raises_in_step_is_recreated(tmp_path):
    flag = tmp_path / "flag"
    env = vector_env(str(flag))
    try:
        env.reset(seed=0)
        flag.write_text("x")
        _, _, _, truncated, info = env.step(np.zeros(3, dtype=np.int64))
        assert list(truncated) == [False, True, False] and info[RESTARTED][1]
        assert not flag.exists() and env.restarts == 1
        for _ in range(3):
            env.step(np.zeros(3, dtype=np.int64))
    finally:
        env.close()


def test_a_simulator_that_always_fails_gives_up_with_a_message(tmp_path):
    env = RestartingAsyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2, context="forkserver", max_restarts=2)
    try:
        env.reset(seed=0)
        with pytest.raises(RuntimeError, match="Sub-env 0 failed 2 times in a row"):
            for _ in range(5):
                os.kill(env.processes[0].pid, signal.SIGKILL)
                time.sleep(0.2)
                env.step(np.zeros(2, dtype=np.int64))
    finally:
        env.close()


def test_a_run_survives_a_killed_maniskill_simulator_with_the_env_runner_local(ray_session):
    import threading

    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    from rllib_pirl import FlowSDEConfig

    config = (
        FlowSDEConfig()
        .environment("ManiSkill", env_config={"task": "PickCube-v1", "max_episode_steps": 20})
        .training(action_chunk=4, train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": [32, 32], "value_hidden_sizes": [16]}})
    )
    algo = config.build_algo()
    try:
        vector_env = algo.env_runner.env.unwrapped
        assert isinstance(vector_env, RestartingAsyncVectorEnv)
        algo.train()
        # once while the policy thinks (between steps), once during sampling
        os.kill(vector_env.processes[0].pid, signal.SIGKILL)
        time.sleep(0.5)
        result = algo.train()
        killer = threading.Timer(1.0, lambda: os.kill(vector_env.processes[1].pid, signal.SIGKILL))
        killer.start()
        for _ in range(2):
            result = algo.train()
        killer.join()
        assert vector_env.restarts == 2
        assert result["training_iteration"] == 4 and result["env_runners"]["num_env_steps_sampled_lifetime"] >= 4 * 64
    finally:
        algo.stop()


def test_an_in_process_env_that_raises_is_recreated_by_rllib(ray_session, tmp_path):
    # envs without worker processes (PointReach, ChunkedGym): RLlib's restart_failed_sub_environments
    from conftest import register_raising_point_reach, tiny_config

    from rllib_pirl import FlowSDEConfig

    flag = tmp_path / "flag"
    register_raising_point_reach("RaisingPointReach", flag)
    config = (
        tiny_config(FlowSDEConfig)
        .environment("RaisingPointReach")
        .fault_tolerance(restart_failed_sub_environments=True)
    )
    algo = config.build_algo()
    try:
        algo.train()
        flag.write_text("x")
        for _ in range(2):
            result = algo.train()
        assert not flag.exists() and result["training_iteration"] == 3
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 3 * 128
    finally:
        algo.stop()
