"""FlowRLModule: what exploration stores is what the learner recomputes."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from rllib_pirl.rl_module import ENTROPY, LATENTS, LOGP, NOISE_STD, STEPS, FlowRLModule

OBS = gym.spaces.Box(-1, 1, (6,), np.float32)
ACT = gym.spaces.Box(-1, 1, (3, 2), np.float32)


def make_module(
    exploration, reduction="sum", K=4, action_space=ACT, exploration_x0="noise", observation_space=OBS, **model
):
    model_config = {
        "exploration_x0": exploration_x0,
        "num_denoise_steps": K,
        "action_chunk": action_space.shape[0],
        "exploration": exploration,
        "logprob_reduction": reduction,
        "noise_level": 0.5,
        "noise_std_range": (0.08, 0.16),
        "model_kwargs": {"hidden_sizes": (32, 32), "value_hidden_sizes": (32,), **model},
    }
    torch.manual_seed(0)
    return FlowRLModule(observation_space=observation_space, action_space=action_space, model_config=model_config)


@pytest.mark.parametrize("exploration", ["sde", "noise"])
@pytest.mark.parametrize("reduction", ["sum", "per_element"])
@pytest.mark.parametrize("x0", ["noise", "zeros"])
def test_stored_log_prob_equals_learner_recomputation(exploration, reduction, x0):
    module = make_module(exploration, reduction, exploration_x0=x0)
    obs = torch.randn(16, 6)
    out = module.forward_exploration({Columns.OBS: obs})
    assert (out[LATENTS][:, 0].abs().max() == 0) == (x0 == "zeros")
    n = 1 if reduction == "sum" else 3 * 2
    assert out[Columns.ACTIONS].shape == (16, 3, 2)
    assert out[LATENTS].shape == (16, 5, 3, 2)
    assert out[LOGP].shape == (16, n) and out[Columns.ACTION_LOGP].shape == (16,)
    assert out[STEPS].shape == (16, 1 if exploration == "sde" else 4)
    assert torch.equal(out[Columns.ACTIONS], out[LATENTS][:, -1])
    train_batch = {Columns.OBS: obs, LATENTS: out[LATENTS], STEPS: out[STEPS]}
    fwd = module.forward_train(train_batch)
    log_ratio = fwd[LOGP] - out[LOGP]
    assert log_ratio.abs().max() < 1e-4
    assert fwd[ENTROPY].shape == (16,) and fwd[NOISE_STD].shape == (16,)
    assert module.compute_values(train_batch).shape == (16,)
    # After a parameter change the recomputation moves: the check above can fail.
    with torch.no_grad():
        for p in module.model.velocity_out.parameters():
            p.add_(0.05)
    assert (module.forward_train(train_batch)[LOGP] - out[LOGP]).abs().max() > 1e-3


def test_inference_is_the_deterministic_ode():
    module = make_module("sde")
    obs = torch.randn(5, 6)
    a = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    b = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    assert torch.equal(a, b)
    explore = module.forward_exploration({Columns.OBS: obs})[Columns.ACTIONS]
    assert not torch.allclose(a, explore)


def test_a_stochastic_evaluation_repeats_and_keeps_the_callers_random_state():
    """evaluate(explore=True) seeds each episode's noise with its reset seed: two runs give the
    same episodes, another seed other ones, and the caller's torch stream goes on untouched."""
    from rllib_pirl.envs import make_point_reach
    from rllib_pirl.evaluation import evaluate

    env = make_point_reach({"action_chunk": 3})
    module = make_module("sde", observation_space=env.observation_space, action_space=env.action_space)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    first = evaluate(module, env, 4, seed=10, explore=True)
    assert torch.equal(torch.rand(3), expected_next)
    again = evaluate(module, env, 4, seed=10, explore=True)
    assert first.returns == again.returns and first.lengths == again.lengths
    shifted = evaluate(module, env, 3, seed=11, explore=True)  # episodes 11-13: the same noise per seed
    assert shifted.returns == first.returns[1:]
    deterministic = evaluate(module, env, 4, seed=10)
    assert deterministic.returns != first.returns


def test_a_deterministic_evaluation_from_noise_repeats_per_seed():
    """inference_x0 = "noise" (`rllib evaluate --x0 noise`, as openpi and lerobot evaluate): x_0 of
    episode i drawn from its seed — a rerun repeats it, episodes shifted by one seed match, and it
    is not the policy from zeros."""
    from rllib_pirl.envs import make_point_reach
    from rllib_pirl.evaluation import evaluate

    env = make_point_reach({"action_chunk": 3})
    module = make_module("sde", observation_space=env.observation_space, action_space=env.action_space)
    zeros = evaluate(module, env, 4, seed=10)
    module.inference_x0 = "noise"
    first = evaluate(module, env, 4, seed=10)
    assert first.returns == evaluate(module, env, 4, seed=10).returns
    assert evaluate(module, env, 3, seed=11).returns == first.returns[1:]
    assert first.returns != zeros.returns


def test_exploration_from_zeros_is_centred_on_the_deterministic_policy():
    """exploration_x0="zeros": the exploration chain is the deterministic chain plus
    the SDE step's noise, so with noise level 0 it IS the deterministic policy."""
    module = make_module("sde", exploration_x0="zeros")
    module.noise_level = 0.0
    obs = torch.randn(5, 6)
    a = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    assert torch.allclose(module.forward_exploration({Columns.OBS: obs})[Columns.ACTIONS], a, atol=1e-6)
    module.exploration_x0 = "noise"
    assert not torch.allclose(module.forward_exploration({Columns.OBS: obs})[Columns.ACTIONS], a, atol=1e-3)


def test_model_may_predict_more_than_the_env_uses():
    """Like π0 (chunk 50, 32 padded dims): only the env's chunk and dims act and count."""
    from rllib_pirl.models import StateFlowPolicy

    class Padded(StateFlowPolicy):
        @classmethod
        def from_spaces(cls, observation_space, action_space, **kw):
            return cls(obs_dim=observation_space.shape[0], horizon=8, action_dim=5, **kw)

    model_config = {
        "model_class": Padded,
        "num_denoise_steps": 3,
        "action_chunk": 3,
        "exploration": "noise",
        "logprob_reduction": "per_element",
        "model_kwargs": {"hidden_sizes": (16, 16)},
    }
    module = FlowRLModule(observation_space=OBS, action_space=ACT, model_config=model_config)
    out = module.forward_exploration({Columns.OBS: torch.randn(4, 6)})
    assert out[LATENTS].shape == (4, 4, 8, 5)
    assert out[Columns.ACTIONS].shape == (4, 3, 2)
    assert torch.equal(out[Columns.ACTIONS], out[LATENTS][:, -1, :3, :2])
    assert out[LOGP].shape == (4, 6)


def test_per_step_action_space_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="ActionChunkWrapper"):
        make_module("sde", action_space=gym.spaces.Box(-1, 1, (2,), np.float32))
