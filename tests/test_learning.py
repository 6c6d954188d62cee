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


@pytest.mark.parametrize("example", ["flow_sde_point_reach.yaml", "flow_noise_point_reach.yaml"])
def test_training_raises_the_return(ray_session, example):
    ((name, spec),) = load_experiments(os.path.join(REPO, "tuned_examples", example)).items()
    algo = build_config(resolve_algorithm(spec["run"]), spec["env"], spec["config"], name).build_algo()
    env = make_point_reach(dict(algo.config.env_config))
    try:
        before = evaluate(algo.get_module(), env, EPISODES, seed=1000)
        for _ in range(ITERATIONS):
            algo.train()
        after = evaluate(algo.get_module(), env, EPISODES, seed=1000)
    finally:
        algo.stop()
    print(f"{spec['run']}: before\n{before.summary()}\nafter\n{after.summary()}")
    # The 95% intervals separate, and the gain is large.
    assert after.return_ci95[0] > before.return_ci95[1]
    assert after.mean_return > before.mean_return + 0.4
    assert after.success_rate > before.success_rate
