"""``use_critic: false`` (RLlib's PPO key): no value baseline — GAE with V ≡ 0 and λ = 1, so
each step's advantage is its discounted reward to go, standardised over the batch — and no
value loss: the value head is neither trained nor used."""

import numpy as np
import pytest
import torch
from conftest import learner_train_batch, tiny_config
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from rllib_pirl.algorithms import FlowNoiseConfig, FlowSDEConfig


def rewards_to_go(rewards: np.ndarray, ends: np.ndarray, gamma: float) -> np.ndarray:
    """Σ_k γ^k r_{t+k} within each run of rows that ``ends`` closes (row t included)."""
    out, running = np.zeros_like(rewards), 0.0
    for i in range(len(rewards) - 1, -1, -1):
        running = rewards[i] + (0.0 if ends[i] else gamma * running)
        out[i] = running
    return out


@pytest.mark.parametrize("config_cls", [FlowSDEConfig, FlowNoiseConfig])
def test_advantages_are_the_standardised_rewards_to_go_and_the_value_head_stays(ray_session, config_cls):
    # lambda 0.5 on purpose: without a critic GAE runs with λ = 1 whatever the config says
    algo = tiny_config(config_cls, use_critic=False, gamma=0.9, lambda_=0.5).build_algo()
    try:
        chunks, batch = learner_train_batch(algo, 128)
        column = {key: np.asarray(batch[key]).reshape(-1) for key in (Columns.REWARDS, Columns.LOSS_MASK)}
        # RLlib appends one masked bootstrap step to every episode chunk and flags the chunk's
        # last real step terminated or truncated: the sum to go stops there (V ≡ 0 bootstraps 0)
        ends = np.asarray(batch[Columns.TERMINATEDS]).reshape(-1) | np.asarray(batch[Columns.TRUNCATEDS]).reshape(-1)
        real = column[Columns.LOSS_MASK].astype(bool)
        assert (~real).sum() == len(chunks) == ends.sum()
        raw = rewards_to_go(column[Columns.REWARDS].astype(np.float64), ends, 0.9)
        assert np.ptp(raw[real]) > 0  # the check below would hold for a constant batch too
        expected = (raw - raw.mean()) / max(1e-4, raw.std())  # RLlib standardises over every row
        assert np.asarray(batch[Postprocessing.ADVANTAGES]) == pytest.approx(expected, abs=1e-5)
        assert np.all(np.asarray(batch[Columns.VF_PREDS]) == 0)

        module = algo.learner_group._learner.module["default_policy"].unwrapped().model
        value_before = [p.detach().clone() for p in module.value_parameters()]
        actor_before = module.velocity_out.weight.detach().clone()
        stats = algo.train()["learners"]["default_policy"]
        assert all(torch.equal(a, b) for a, b in zip(value_before, module.value_parameters()))
        assert not torch.equal(actor_before, module.velocity_out.weight)
        assert "vf_loss" not in stats and "vf_explained_var" not in stats
    finally:
        algo.stop()


def test_use_critic_must_be_a_bool():
    with pytest.raises(ValueError, match="use_critic must be true"):
        tiny_config(FlowSDEConfig, use_critic="no").validate()
