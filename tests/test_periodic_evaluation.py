"""Periodic evaluation during training (RLlib's evaluation_interval): fixed seeds, success rate
with its interval in the results, episode videos of camera envs in TensorBoard."""

import glob
import os

import pytest
from conftest import tiny_config, tiny_pi_rl_config

from rllib_pirl import FlowSDEConfig


def test_every_round_evaluates_the_same_seeded_episodes(ray_session):
    # lr 0: the weights stay, so rounds on the same fixed seeds give the same numbers
    config = tiny_config(FlowSDEConfig, lr=0.0, value_lr=0.0).evaluation(evaluation_interval=1, evaluation_duration=30)
    algo = config.build_algo()
    try:
        rounds = [algo.train()["evaluation"]["env_runners"] for _ in range(2)]
        assert algo.eval_env_runner_group is None  # no second set of envs: the evaluation makes its own
    finally:
        algo.stop()
    assert rounds[0] == rounds[1] and rounds[0]["num_episodes"] == 30
    lo, rate, hi = (rounds[0][k] for k in ("success_rate_ci95_lo", "success_rate", "success_rate_ci95_hi"))
    assert 0 <= lo <= rate <= hi <= 1


def test_a_duration_in_timesteps_and_a_negative_seed_are_refused():
    config = (
        FlowSDEConfig()
        .environment("PointReach")
        .evaluation(evaluation_interval=1, evaluation_duration=100, evaluation_duration_unit="timesteps")
    )
    with pytest.raises(ValueError, match="evaluation_duration must be a number of episodes"):
        config.validate()
    config = FlowSDEConfig().environment("PointReach").evaluation(evaluation_interval=1, evaluation_seed=-1)
    with pytest.raises(ValueError, match="evaluation_seed must be an integer >= 0"):
        config.validate()
    # the yaml way (update_from_dict routes evaluation_* keys to evaluation())
    config = FlowSDEConfig().update_from_dict({"evaluation_interval": 2, "evaluation_seed": 7, "evaluation_videos": 0})
    assert (config.evaluation_seed, config.evaluation_videos) == (7, 0)


def test_camera_episodes_reach_tensorboard_as_animated_images(ray_session, tmp_path):
    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    if not os.environ.get("VK_ICD_FILENAMES") and not os.path.isdir("/usr/share/vulkan/icd.d"):
        pytest.skip("no Vulkan driver: run scripts/setup_maniskill.sh and source .vulkan/env.sh")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rllib_pirl.envs.maniskill import TASK_INSTRUCTIONS
    from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(str(tmp_path / "tok.model"), sorted(TASK_INSTRUCTIONS.values()))
    env_config = {"task": "PickCube-v1", "obs_mode": "rgb", "camera_size": 32, "max_episode_steps": 10}
    config = tiny_pi_rl_config(FlowSDEConfig, "ManiSkill", env_config, "pi0", tokenizer).evaluation(
        evaluation_interval=1, evaluation_duration=2, evaluation_videos=1
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        logdir = algo.logdir
    finally:
        algo.stop()
    assert result["evaluation"]["env_runners"]["num_episodes"] == 2
    (events,) = glob.glob(os.path.join(logdir, "*.evaluation_videos"))
    images = EventAccumulator(events, size_guidance={"images": 0}).Reload().Images("evaluation/episode_0")
    assert len(images) == 1 and images[0].step == 1
    assert images[0].encoded_image_string[:4] == b"GIF8" and (images[0].height, images[0].width) == (32, 64)


@pytest.mark.parametrize("n", [1, 7, 100, 200, 400])
def test_the_95_interval_holds_the_rate_and_stays_in_0_1(n):
    """0 and n successes included: the plots draw rate − low and high − rate as error bars."""
    from rllib_pirl.evaluation import wilson_interval

    for wins in range(n + 1):
        lo, hi = wilson_interval(wins, n)
        assert 0.0 <= lo <= wins / n <= hi <= 1.0
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    assert wilson_interval(40, 100) == pytest.approx((0.3094, 0.4980), abs=1e-4)  # the textbook value
