"""Micro-batches: gradients accumulated over micro-batches equal the whole minibatch's."""

import pytest
from conftest import learner_states, tiny_config

METRICS = ["policy_loss", "vf_loss", "vf_loss_unclipped", "vf_explained_var", "entropy", "approx_kl", "clip_fraction"]


def one_iteration(name, micro_batch_size, learners, minibatch_size=128):
    from rllib_pirl import FlowNoiseConfig, FlowSDEConfig

    cls = {"FlowSDE": FlowSDEConfig, "FlowNoise": FlowNoiseConfig}[name]
    config = tiny_config(
        cls,
        train_batch_size_per_learner=128,
        minibatch_size=minibatch_size,
        num_epochs=2,
        micro_batch_size=micro_batch_size,
    )
    if learners:
        config = config.learners(num_learners=learners, num_cpus_per_learner=0.5)
    algo = config.build_algo()
    try:
        metrics = algo.train()["learners"]["default_policy"]
        return learner_states(algo), metrics
    finally:
        algo.stop()


@pytest.mark.parametrize("learners", [0, 2])
@pytest.mark.parametrize("name", ["FlowSDE", "FlowNoise"])
def test_micro_batches_give_the_weights_and_metrics_of_the_whole_minibatch(ray_session, name, learners):
    whole_states, whole = one_iteration(name, None, learners)
    micro_states, micro = one_iteration(name, 32, learners)
    for whole_state, micro_state in zip(whole_states, micro_states, strict=True):
        diff = max(float((whole_state[k] - micro_state[k]).abs().max()) for k in whole_state)
        assert diff <= 1e-5, diff
    for key in METRICS:
        assert micro[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    # the check can fail: minibatches of 32 (an optimizer step each) land elsewhere
    small_states, _ = one_iteration(name, None, learners, minibatch_size=32)
    assert max(float((whole_states[0][k] - small_states[0][k]).abs().max()) for k in whole_states[0]) > 1e-4


def test_micro_batch_must_divide_the_minibatch():
    from rllib_pirl import FlowSDEConfig

    config = FlowSDEConfig().environment("PointReach").training(minibatch_size=128, micro_batch_size=48)
    with pytest.raises(ValueError, match="micro_batch_size=48 does not divide the minibatch of 128 samples.*e.g. 32"):
        config.validate()
    with pytest.raises(ValueError, match="micro_batch_size must be an integer >= 1"):
        FlowSDEConfig().environment("PointReach").training(micro_batch_size=0).validate()
