"""Action chunking and the PointReach task."""

import gymnasium as gym
import numpy as np
import pytest

from rllib_pirl.envs import ActionChunkWrapper, PointReachEnv, make_chunked_gym_env, make_point_reach


class Counter(gym.Env):
    """Reward i at step i; terminates at step `end`; success reported at step `ok`."""

    def __init__(self, end=100, ok=-1):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.end, self.ok = end, ok

    def reset(self, *, seed=None, options=None):
        self.i = 0
        self.actions = []
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.i += 1
        self.actions.append(np.asarray(action))
        return np.array([self.i], np.float32), float(self.i), self.i >= self.end, False, {"success": self.i == self.ok}


def test_chunk_sums_rewards_and_runs_every_action_in_order():
    env = ActionChunkWrapper(Counter(), 3)
    assert env.action_space.shape == (3, 2)
    env.reset()
    chunk = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert reward == 1 + 2 + 3 and obs[0] == 3 and info["chunk_steps"] == 3
    assert np.allclose(np.stack(env.unwrapped.actions), chunk)
    assert not terminated and not truncated


def test_chunk_stops_at_done_and_ors_success():
    env = ActionChunkWrapper(Counter(end=5, ok=4), 3)
    env.reset()
    _, r1, d1, _, info1 = env.step(np.zeros((3, 2)))
    assert (r1, d1, info1["success"]) == (6.0, False, False)
    _, r2, d2, _, info2 = env.step(np.zeros((3, 2)))
    assert r2 == 4 + 5 and d2 and info2["chunk_steps"] == 2
    assert info2["success"]  # step 4 succeeded, step 5 (last) did not
    assert env.unwrapped.i == 5  # nothing executed after the terminal step


def test_wrong_chunk_shape_and_bad_chunk_lengths_are_rejected():
    env = ActionChunkWrapper(Counter(), 3)
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        env.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="action_chunk must be an integer >= 1"):
        ActionChunkWrapper(Counter(), 0)
    with pytest.raises(ValueError, match="longer than the episode limit"):
        make_point_reach({"action_chunk": 51})


def test_point_reach_rewards_progress_and_succeeds_at_the_goal():
    env = PointReachEnv()
    obs, _ = env.reset(seed=3)
    total, done, steps = 0.0, False, 0
    start = np.linalg.norm(obs[2:])
    while not done:
        obs, reward, done, _truncated, info = env.step(np.clip(obs[2:] / 0.1, -1, 1))
        total += reward
        steps += 1
        assert steps < 100
    assert info["success"]
    assert np.isclose(total, start - np.linalg.norm(obs[2:]) + 1.0)


def test_chunked_gym_env_wraps_any_gymnasium_id():
    env = make_chunked_gym_env({"id": "Pendulum-v1", "action_chunk": 5})
    assert env.action_space.shape == (5, 1)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros((5, 1), np.float32))
    assert reward < 0
    with pytest.raises(ValueError, match="Unknown gymnasium env id"):
        make_chunked_gym_env({"id": "NoSuchEnv-v0"})


def test_a_bare_gymnasium_id_trains_as_chunked_gym(ray_session):
    """`env: Pendulum-v1` (README: any gymnasium id works): runs in chunks, its env_config
    passed to gymnasium.make (it used to crash on the `action_chunk` keyword)."""
    from conftest import tiny_config

    from rllib_pirl import FlowSDEConfig

    config = tiny_config(FlowSDEConfig, train_batch_size_per_learner=32, minibatch_size=32)
    config = config.environment("Pendulum-v1", env_config={"g": 9.0})
    algo = config.build_algo()
    try:
        assert algo.config.env == "ChunkedGym"
        assert algo.config.env_config == {"id": "Pendulum-v1", "kwargs": {"g": 9.0}, "action_chunk": 4}
        result = algo.train()
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0
        assert algo.env_runner.env.unwrapped.envs[0].unwrapped.g == 9.0
    finally:
        algo.stop()
