"""Both algorithms raise the return of a randomly initialised flow policy on
PointReach within a bounded budget (the tuned examples' settings, fewer iterations)."""

import os

import pytest
from conftest import REPO

from rllib_pirl.envs import make_point_reach
from rllib_pirl.evaluation import evaluate
from rllib_pirl.experiments import build_config, load_experiments, resolve_algorithm

ITERATIONS = 40  # 40 × 512 chunk steps ≈ 82k env steps
EPISODES = 100  # fixed evaluation seeds 1000..1099, deterministic policy


def assert_training_raises_the_return(example, **overrides):
    ((name, spec),) = load_experiments(os.path.join(REPO, "tuned_examples", example)).items()
    config = dict(spec["config"], **overrides)
    algo = build_config(resolve_algorithm(spec["run"]), spec["env"], config, name).build_algo()
    env = make_point_reach(dict(algo.config.env_config))
    try:
        before = evaluate(algo.get_module(), env, EPISODES, seed=1000)
        for _ in range(ITERATIONS):
            algo.train()
        after = evaluate(algo.get_module(), env, EPISODES, seed=1000)
    finally:
        algo.stop()
    print(f"{spec['run']} {overrides}: before\n{before.summary()}\nafter\n{after.summary()}")
    # The 95% intervals separate, and the gain is large.
    assert after.return_ci95[0] > before.return_ci95[1]
    assert after.mean_return > before.mean_return + 0.4
    assert after.success_rate > before.success_rate


@pytest.mark.parametrize("example", ["flow_sde_point_reach.yaml", "flow_noise_point_reach.yaml"])
def test_training_raises_the_return(ray_session, example):
    assert_training_raises_the_return(example)


def test_two_learners_learn_like_one(ray_session):
    """The same total batch and minibatch split over 2 DDP learners (gloo): the same gain."""
    assert_training_raises_the_return(
        "flow_sde_point_reach.yaml",
        num_learners=2,
        num_cpus_per_learner=0.5,
        train_batch_size_per_learner=256,
        minibatch_size=64,
    )
