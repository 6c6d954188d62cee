"""Flow-SDE and Flow-Noise as RLlib algorithms."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_config
from ray.rllib.core.columns import Columns

import rllib_pirl
from rllib_pirl import FlowNoise, FlowNoiseConfig, FlowSDE, FlowSDEConfig

METRICS = [
    "policy_loss",
    "vf_loss",
    "clip_fraction",
    "approx_kl",
    "mean_abs_logp",
    "noise_std",
    "vf_explained_var",
    "entropy",
]
CONFIGS = {"FlowSDE": FlowSDEConfig, "FlowNoise": FlowNoiseConfig}


def test_algorithms_are_importable_and_registered():
    from ray.tune.registry import TRAINABLE_CLASS, _global_registry

    assert rllib_pirl.FlowSDE is FlowSDE and rllib_pirl.FlowNoise is FlowNoise
    for name in ("FlowSDE", "FlowNoise"):
        assert _global_registry.contains(TRAINABLE_CLASS, name)
    assert FlowSDEConfig().algo_class is FlowSDE and FlowNoiseConfig().algo_class is FlowNoise


def test_paper_defaults():
    sde, noise = FlowSDEConfig(), FlowNoiseConfig()
    for c in (sde, noise):
        assert (c.num_denoise_steps, c.noise_level, tuple(c.noise_std_range), c.action_chunk) == (
            4,
            0.5,
            (0.08, 0.16),
            5,
        )
        assert (c.gamma, c.lambda_, c.clip_param, c.use_kl_loss, c.vf_huber_delta, c.value_clip_param) == (
            0.99,
            0.95,
            0.2,
            False,
            10.0,
            0.2,
        )
        assert (c.lr, c.value_lr) == (7.91e-6, 1.55e-4)
    assert sde.entropy_coeff == 0.0 and noise.entropy_coeff == 0.005
    assert sde.model_config["exploration"] == "sde" and noise.model_config["exploration"] == "noise"


@pytest.mark.parametrize(
    "name, settings",
    [
        ("FlowSDE", {}),
        ("FlowNoise", {}),
        ("FlowSDE", {"sde_steps": "all"}),
        ("FlowSDE", {"advantage_estimator": "grpo", "group_size": 2}),
    ],
)
def test_first_update_has_ratio_one_then_the_policy_moves(ray_session, name, settings):
    # lr = 0: the learner recomputes exactly what the env runner stored (ratio = 1 in
    # every minibatch), through RLlib's whole sampling and batching pipeline.
    algo = tiny_config(CONFIGS[name], lr=0.0, value_lr=0.0, **settings).build_algo()
    try:
        result = algo.train()
        learner = result["learners"]["default_policy"]
        for key in METRICS:
            assert key in learner or (settings.get("advantage_estimator") == "grpo" and "vf" in key), key
        assert learner["approx_kl"] < 1e-7
        assert learner["clip_fraction"] == 0.0
        assert learner["mean_abs_logp"] > 0
        assert result["env_runners"]["num_episodes"] > 0
        assert 0.0 <= result["env_runners"]["success_rate"] <= 1.0
    finally:
        algo.stop()
    algo = tiny_config(CONFIGS[name], lr=3e-3, num_epochs=4, **settings).build_algo()
    try:
        algo.train()
        learner = algo.train()["learners"]["default_policy"]
        assert learner["approx_kl"] > 1e-6
        assert np.isfinite(learner.get("vf_loss", 0.0))
    finally:
        algo.stop()


SCHEDULES = {  # the schedule; the reported key; its (env step, value) points
    "FlowSDE": ({"noise_level": [[0, 0.3], [256, 1.2]]}, "noise_level", ([0, 256], [0.3, 1.2])),
    "FlowNoise": (
        {"noise_std_range": [[0, [0.08, 0.16]], [256, [0.02, 0.04]]]},
        "noise_std_min",
        ([0, 256], [0.08, 0.02]),
    ),
}


@pytest.mark.parametrize("name", ["FlowSDE", "FlowNoise"])
def test_a_noise_schedule_moves_the_rollouts_noise_and_the_learner_follows(ray_session, name):
    # ~128 env steps per iteration (more when episodes end within it): before each sampling
    # round the schedule is at the env steps sampled so far (0, ~128, ~256, ~384), linear
    # between its points and flat after the last. With lr = 0 the learner's log-probs equal
    # the rollouts' only if it uses the noise each rollout used (its own module never gets
    # the schedule's values).
    schedule, key, (steps, values) = SCHEDULES[name]
    algo = tiny_config(CONFIGS[name], lr=0.0, value_lr=0.0, **schedule).build_algo()
    try:
        seen, expected, sampled = [], [], 0
        for _ in range(4):
            expected.append(float(np.interp(sampled, steps, values)))
            result = algo.train()
            seen.append(result["exploration"][key])
            sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
            assert result["learners"]["default_policy"]["approx_kl"] < 1e-6
        assert seen == pytest.approx(expected)
        assert min(values) < expected[1] < max(values) and expected[2] == expected[3] == values[-1]  # moving, then flat
        level, std_range = algo.env_runner.module.noise_level, algo.env_runner.module.noise_std_range
        assert (level if name == "FlowSDE" else std_range[0]) == pytest.approx(expected[-1])
    finally:
        algo.stop()


def test_env_gets_the_action_chunk_from_the_config(ray_session):
    algo = tiny_config(FlowSDEConfig, action_chunk=3).build_algo()
    try:
        env = algo.env_runner.env
        assert env.single_action_space.shape == (3, 2)
        assert algo.config.env_config["action_chunk"] == 3
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"noise_level": -0.1}, "noise_level must be a number >= 0"),
        ({"noise_std_range": (0.2, 0.1)}, "0 < min <= max"),
        ({"noise_level": [[0, 0.5], [100, -0.2]]}, "noise_level at env step 100: noise_level must be a number >= 0"),
        ({"noise_level": [[0, 0.5], [100, 0.2], [50, 0.1]]}, "must be numbers that start at 0 and increase"),
        ({"noise_level": [[10, 0.5]]}, "start at 0 and increase"),
        ({"noise_std_range": [[0, [0.1, 0.2]], [100, [0.3, 0.2]]]}, "at env step 100: .*0 < min <= max"),
        ({"num_denoise_steps": 0}, "num_denoise_steps"),
        ({"logprob_reduction": "mean"}, "logprob_reduction must be one of"),
        ({"sde_steps": "two"}, "sde_steps must be one of"),
        ({"action_chunk": 0}, "action_chunk must be an integer >= 1"),
        ({"value_lr": -1.0}, "value_lr must be a number >= 0"),
        ({"value_clip_param": 0.0}, "value_clip_param must be a number > 0"),
        ({"dual_clip_param": 0.5}, "dual_clip_param must be null or a number > 1"),
        ({"ref_kl_coeff": -0.1}, "ref_kl_coeff must be a number >= 0"),
        ({"kl_early_stop": 0.0}, "kl_early_stop must be null or a number > 0"),
    ],
)
def test_invalid_settings_are_rejected(setting, message):
    config = FlowSDEConfig().environment("PointReach").training(**setting)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_conflicting_env_chunk_is_rejected():
    config = FlowSDEConfig().environment("PointReach", env_config={"action_chunk": 2}).training(action_chunk=4)
    with pytest.raises(ValueError, match="env_config.action_chunk=2"):
        config.validate()


RESTORE_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.columns import Columns
import rllib_pirl
algo = Algorithm.from_checkpoint(sys.argv[1])
obs = torch.tensor(json.loads(sys.argv[2]), dtype=torch.float32)
print("ACTIONS", json.dumps(algo.get_module().forward_inference({Columns.OBS: obs})[Columns.ACTIONS].tolist()))
print("CLASS", type(algo).__name__)
algo.stop()
"""


@pytest.mark.parametrize("name", ["FlowSDE", "FlowNoise"])
def test_save_and_restore_in_a_fresh_process_gives_identical_actions(ray_session, tmp_path, name):
    algo = tiny_config(CONFIGS[name]).build_algo()
    try:
        algo.train()  # weights differ from the initial ones
        obs = torch.randn(7, 4)
        actions = algo.get_module().forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    out = subprocess.run(
        [sys.executable, "-c", RESTORE_SCRIPT, path, json.dumps(obs.tolist())],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("ACTIONS", "CLASS")))
    assert lines["CLASS"] == name
    restored = torch.tensor(json.loads(lines["ACTIONS"]))
    assert torch.equal(restored, actions.float())


def test_ref_kl_anchors_the_policy_to_its_starting_weights(ray_session, tmp_path):
    """``ref_kl_coeff``: the learner keeps a frozen copy of the weights it starts from — also
    when a checkpoint is restored, never in the module's state — reports KL(π_θ ‖ π_ref),
    and a large coefficient keeps the policy nearer to it than a negligible one."""
    kls = {}
    for beta in (1e-9, 20.0):
        algo = tiny_config(FlowSDEConfig, ref_kl_coeff=beta, lr=1e-3).build_algo()
        try:
            module = algo.learner_group._learner.module["default_policy"].unwrapped()
            start = {k: v.clone() for k, v in module.model.state_dict().items()}
            for _ in range(3):
                learner = algo.train()["learners"]["default_policy"]
            kls[beta] = learner["ref_kl"]
            trained = module.model.state_dict()
            assert any(not torch.equal(trained[k], start[k]) for k in start)
            assert all(torch.equal(module._reference.state_dict()[k], start[k]) for k in start)
            assert set(algo.get_module().get_state()) == set(module.state_dict())
            path = algo.save_to_path(str(tmp_path / f"ckpt{beta}"))
        finally:
            algo.stop()
    assert 0 < kls[20.0] < kls[1e-9] / 2, kls
    again = tiny_config(FlowSDEConfig, ref_kl_coeff=20.0).build_algo()
    try:
        again.restore_from_path(path)
        module = again.learner_group._learner.module["default_policy"].unwrapped()
        assert any(not torch.equal(module.model.state_dict()[k], start[k]) for k in start)
        assert all(torch.equal(module._reference.state_dict()[k], start[k]) for k in start)
    finally:
        again.stop()


def test_ref_kl_on_a_learner_built_without_a_reference_is_a_clear_error(ray_session):
    """A learner built with ``ref_kl_coeff`` 0 kept no π_ref: raising β on it later (its config
    edited in place) must say so, not train without the anchor."""
    algo = tiny_config(FlowSDEConfig).build_algo()
    try:
        learner = algo.learner_group._learner
        learner.config._is_frozen = False
        learner.config.ref_kl_coeff = 1.0
        with pytest.raises(ValueError, match="keeps no reference policy"):
            algo.train()
    finally:
        algo.stop()


def test_timers_report_the_iterations_own_seconds(ray_session):
    """RLlib keeps ``timers/`` as moving averages (coefficient 0.01): a 1000 s value logged
    after the first iteration would then dominate the second's. FlowPPO reports each
    iteration's own sampling and update time, within that iteration's wall time."""
    from ray.rllib.utils.metrics import ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER, TIMERS

    algo = tiny_config(FlowSDEConfig).build_algo()
    try:
        algo.train()
        for timer in (ENV_RUNNER_SAMPLING_TIMER, LEARNER_UPDATE_TIMER):
            algo.metrics.log_value((TIMERS, timer), 1000.0)
        result = algo.train()
        timers = result[TIMERS]
        assert 0 < timers[ENV_RUNNER_SAMPLING_TIMER] + timers[LEARNER_UPDATE_TIMER] <= result["time_this_iter_s"]
    finally:
        algo.stop()


def optimizer_steps(algo) -> dict[str, int]:
    """The local learner's AdamW step count per optimizer ("actor", "critic")."""
    learner = algo.learner_group._learner
    return {
        name: max(int(state["step"]) for state in learner.get_optimizer("default_policy", name).state.values())
        for name in ("actor", "critic")
    }


@pytest.mark.parametrize("name", ["FlowSDE", "FlowNoise"])
def test_kl_early_stop_ends_the_actors_steps_of_an_update_not_the_critics(ray_session, name):
    """4 epochs over a ~128-row batch in minibatches of 64: ~8 steps per update. Without the
    guard the actor takes every step the critic takes; with ``kl_early_stop: 1e-6`` the first
    minibatch (at the rollout's weights: KL 0) steps and the second, whose KL after that step
    with lr 3e-3 is far above 1e-6, stops the actor for the rest of the update; the critic
    steps throughout."""
    for threshold in (None, 1e-6):
        algo = tiny_config(CONFIGS[name], lr=3e-3, num_epochs=4, kl_early_stop=threshold).build_algo()
        try:
            before = {k: v.clone() for k, v in algo.get_module().model.state_dict().items()}
            result = algo.train()["learners"]["default_policy"]
            steps = optimizer_steps(algo)
            assert steps["critic"] >= 8 and steps["actor"] == (1 if threshold else steps["critic"]), steps
            assert result["actor_steps"] == steps["actor"]
            after = algo.get_module().model.state_dict()
            assert not torch.equal(after["velocity_out.weight"], before["velocity_out.weight"])
            # a new train batch, a new decision: the next update's first minibatch steps again
            result = algo.train()["learners"]["default_policy"]
            assert result["actor_steps"] == (1 if threshold else optimizer_steps(algo)["critic"] - steps["critic"])
        finally:
            algo.stop()


def test_dual_clip_bounds_the_surrogate_of_bad_actions_only():
    """Hand-made ratios 0.5, 1, 5 (ε = 0.2, c = 3): with A = −1 the ratio 5 counts −3, not −5,
    and gives no gradient; with A = +1 nothing changes."""
    import math

    from rllib_pirl.algorithms.learner import ppo_surrogate

    log_ratio = torch.log(torch.tensor([[0.5, 1.0, 5.0], [0.5, 1.0, 5.0]])).requires_grad_()
    advantages = torch.tensor([-1.0, 1.0])
    plain = ppo_surrogate(log_ratio, advantages, 0.2)
    dual = ppo_surrogate(log_ratio, advantages, 0.2, dual_clip=3.0)
    assert plain.tolist() == pytest.approx([(-0.8 - 1.0 - 5.0) / 3, (0.5 + 1.0 + 1.2) / 3])
    assert dual.tolist() == pytest.approx([(-0.8 - 1.0 - 3.0) / 3, (0.5 + 1.0 + 1.2) / 3])
    (grad,) = torch.autograd.grad(dual[0], log_ratio)
    assert grad[0].tolist() == pytest.approx([0.0, -1.0 / 3, 0.0])  # r·A's derivative −r/3 only at r = 1
    assert not math.isclose(plain[0].item(), dual[0].item())
