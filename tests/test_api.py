"""The Python API under the `rllib` command: pure parts without Ray, one table of
defaults, evaluation from Python, models that own their heads and constructor arguments."""

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_config

from rllib_pirl.models import StateFlowPolicy
from rllib_pirl.models.checkpoint import load_model, save_model
from rllib_pirl.settings import FLOW_CONFIG_KEYS, FlowLearnerSettings, FlowModuleSettings


def test_flow_math_and_models_import_without_ray():
    code = (
        "import sys, rllib_pirl, rllib_pirl.flow, rllib_pirl.models, rllib_pirl.models.pi0, rllib_pirl.settings, "
        "rllib_pirl.envs\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_loads_the_rllib_parts_on_first_use():
    code = (
        "import sys, rllib_pirl\n"
        "assert 'ray' not in sys.modules\n"
        "cls = rllib_pirl.FlowSDE\n"
        "from ray.tune.registry import ENV_CREATOR, TRAINABLE_CLASS, _global_registry as r\n"
        "print(cls.__name__, r.contains(TRAINABLE_CLASS, 'FlowNoise'), r.contains(ENV_CREATOR, 'LIBERO'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["FlowSDE", "True", "True"]


def test_one_table_of_defaults_for_the_config_and_the_module():
    from rllib_pirl import FlowNoiseConfig, FlowSDEConfig
    from rllib_pirl.rl_module import FlowRLModule

    tables = {f.name: f.default for t in (FlowModuleSettings, FlowLearnerSettings) for f in dataclasses.fields(t)}
    assert FLOW_CONFIG_KEYS == {k: v for k, v in tables.items() if k != "exploration"}
    for cls, exploration in ((FlowSDEConfig, "sde"), (FlowNoiseConfig, "noise")):
        config = cls()
        assert {k: getattr(config, k) for k in FLOW_CONFIG_KEYS} == FLOW_CONFIG_KEYS
        included = config._model_config_auto_includes
        assert {f.name: included[f.name] for f in dataclasses.fields(FlowModuleSettings)} == dict(
            vars(FlowModuleSettings()), exploration=exploration
        )
    # A module without an algorithm config (a model checkpoint evaluated) gets the same defaults
    # (the chunk is the env's).
    obs, act = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (2, 2), np.float32)
    module = FlowRLModule(observation_space=obs, action_space=act, model_config={})
    defaults = FlowModuleSettings()
    assert (module.num_denoise_steps, module.noise_level, module.noise_std_range, module.action_chunk) == (
        defaults.num_denoise_steps,
        defaults.noise_level,
        defaults.noise_std_range,
        2,
    )
    assert (module.logprob_reduction, module.inference_x0, module.exploration_x0, module.exploration_kind) == (
        defaults.logprob_reduction,
        defaults.inference_x0,
        defaults.exploration_x0,
        defaults.exploration,
    )
    assert module.model.std_min == defaults.noise_std_range[0]


def test_one_validation_for_the_config_and_the_module():
    from rllib_pirl import FlowSDEConfig
    from rllib_pirl.rl_module import FlowRLModule

    bad = {"noise_level": -1.0, "noise_std_range": (0.3, 0.1), "inference_x0": "ones"}
    messages = FlowModuleSettings(**bad).errors()
    assert len(messages) == 3
    with pytest.raises(ValueError) as config_error:
        FlowSDEConfig().environment("PointReach").training(**bad).validate()
    obs, act = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (2, 2), np.float32)
    with pytest.raises(ValueError) as module_error:
        FlowRLModule(observation_space=obs, action_space=act, model_config=bad)
    for message in messages:
        assert message in str(config_error.value) and message in str(module_error.value)


class WidePolicy(StateFlowPolicy):
    """A custom model with a constructor argument of its own."""

    def __init__(self, obs_dim, horizon, action_dim, scale: float = 1.0, **kwargs):
        super().__init__(obs_dim, horizon, action_dim, **kwargs)
        self.scale = scale


def test_init_kwargs_are_the_constructor_arguments_and_survive_a_checkpoint(tmp_path):
    model = WidePolicy(3, 2, 2, scale=2.5, hidden_sizes=(16, 16), value_hidden_sizes=(8,))
    assert model.init_kwargs["scale"] == 2.5
    assert model.init_kwargs["hidden_sizes"] == [16, 16] and "kwargs" not in model.init_kwargs
    plain = StateFlowPolicy(3, 2, 2, hidden_sizes=(16, 16))
    assert plain.init_kwargs["noise_std_range"] == [0.08, 0.16]  # defaults recorded too
    assert plain.init_kwargs["hidden_sizes"] == [16, 16]
    save_model(model, str(tmp_path / "ck"))
    loaded = load_model(str(tmp_path / "ck"))
    assert type(loaded) is WidePolicy and loaded.scale == 2.5
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


class CriticAuxPolicy(StateFlowPolicy):
    """A custom model whose heads have names of its own, and whose BC loss touches its critic."""

    def __init__(self, obs_dim, horizon, action_dim, **kwargs):
        super().__init__(obs_dim, horizon, action_dim, **kwargs)
        self.critic = torch.nn.Linear(obs_dim, 1)

    def value(self, context):
        return self.critic(context["input"]).squeeze(-1)

    def value_parameters(self):
        return self.critic.parameters()

    def flow_matching_loss(self, obs, actions):
        return super().flow_matching_loss(obs, actions) + self.value(self.encode(obs)).pow(2).mean()


def test_sft_leaves_the_heads_the_model_names_alone():
    from rllib_pirl.sft import fit

    torch.manual_seed(0)
    model = CriticAuxPolicy(3, 2, 2, hidden_sizes=(16, 16), value_hidden_sizes=(8,))
    heads = {id(p) for p in model.rl_head_parameters()}
    assert heads == {id(p) for m in (model.critic, model.noise_head) for p in m.parameters()}
    assert model.rl_head_state_keys() == {"critic.weight", "critic.bias"} | {
        f"noise_head.{k}" for k in model.noise_head.state_dict()
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = {"state": torch.randn(32, 3), "actions": torch.randn(32, 2, 2)}
    fit(model, data, steps=3, batch_size=8, lr=1e-2, seed=0, log_every=10)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in model.rl_head_state_keys())
    assert not torch.equal(before["velocity_out.weight"], after["velocity_out.weight"])


def test_evaluate_checkpoint_from_python(ray_session, tmp_path):
    """An algorithm checkpoint and the model exported from it evaluate the same through the
    Python API as the algorithm's own module does, also with the seeds split between two
    worker processes; bad input is a UsageError."""
    from rllib_pirl import FlowSDEConfig, evaluate_checkpoint
    from rllib_pirl.envs import make_point_reach
    from rllib_pirl.errors import UsageError
    from rllib_pirl.evaluation import evaluate

    algo = tiny_config(FlowSDEConfig).build_algo()
    try:
        algo.train()
        algo.save_to_path(str(tmp_path / "algo"))
        env = make_point_reach(dict(algo.config.env_config))
        expected = evaluate(algo.get_module(), env, 5, seed=20)
        save_model(algo.get_module().model, str(tmp_path / "model"))
    finally:
        algo.stop()
    result = evaluate_checkpoint(str(tmp_path / "algo"), episodes=5, seed=20, verbose=False)
    assert result.returns == expected.returns and result.lengths == expected.lengths
    from_model = evaluate_checkpoint(
        str(tmp_path / "model"), env="PointReach", env_config={"action_chunk": 4}, episodes=5, seed=20, verbose=False
    )
    assert from_model.returns == expected.returns
    split = evaluate_checkpoint(str(tmp_path / "algo"), episodes=5, seed=20, workers=2, verbose=False)
    assert split.returns == expected.returns and split.lengths == expected.lengths  # seeds 20-21 and 22-24
    with pytest.raises(UsageError, match="neither an RLlib algorithm checkpoint"):
        evaluate_checkpoint(str(tmp_path), verbose=False)
    with pytest.raises(UsageError, match="needs an env"):
        evaluate_checkpoint(str(tmp_path / "model"), verbose=False)
    with pytest.raises(UsageError, match="episodes must be >= 1"):
        evaluate_checkpoint(str(tmp_path / "algo"), episodes=0, verbose=False)


def test_an_algorithm_checkpoint_explores_at_the_noise_its_schedule_had_reached(ray_session, tmp_path):
    """`rllib evaluate --explore` on an algorithm checkpoint uses the noise its run's schedule
    had reached when it saved (here after the step), not the schedule's start."""
    from rllib_pirl import FlowSDEConfig
    from rllib_pirl.evaluation import load_algorithm_checkpoint, sampled_env_steps

    # one iteration samples 128 steps of RLlib's counter (the one the schedules follow): past the step
    algo = tiny_config(FlowSDEConfig, noise_level=[[0, 0.5], [100, 0.5], [101, 0.2]]).build_algo()
    try:
        algo.train()
        steps = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"))
        algo.save_to_path(str(tmp_path / "algo"))
    finally:
        algo.stop()
    assert steps >= 101 and sampled_env_steps(str(tmp_path / "algo")) == steps
    module, _ = load_algorithm_checkpoint(str(tmp_path / "algo"))
    assert module.noise_level == pytest.approx(0.2)
