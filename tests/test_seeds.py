"""Reset seeds: every sub-env of every env runner, every training seed and every continued
part of a run starts its own episodes (``rllib_pirl.env_runner.reset_seeds``)."""

from __future__ import annotations

import numpy as np
from conftest import tiny_config

from rllib_pirl.callbacks import SuccessRateCallback

STARTS: list[np.ndarray] = []  # first observations of the episodes a local env runner started


class RecordStarts(SuccessRateCallback):
    def on_episode_start(self, *, episode, **kwargs):
        STARTS.append(np.asarray(episode.get_observations(0)).copy())


def first_observations_of():
    """A function: the first observation of each episode a runner starts in one step of its
    sub-envs (made inside a function: pickled by value to the runners, which cannot import tests/)."""

    def first_observations(runner) -> list[tuple]:
        import numpy as np

        episodes = runner.sample(num_timesteps=runner.num_envs, random_actions=True)
        return [tuple(np.round(np.asarray(e.get_observations(0)), 6).ravel()) for e in episodes if e.t_started == 0]

    return first_observations


def test_no_two_sub_envs_of_two_runners_or_two_training_seeds_start_the_same_episodes(ray_session):
    """RLlib alone seeds runner r's vector env with seed + r and gymnasium sub-env i with that
    + i: runner 1's sub-env 1 and runner 2's sub-env 0 (and training seed 1's sub-env 0) would
    replay one stream of initial states."""
    from rllib_pirl.algorithms import FlowSDEConfig

    first_observations = first_observations_of()
    two_runners = (
        tiny_config(FlowSDEConfig)
        .env_runners(num_env_runners=2, num_envs_per_env_runner=4, num_cpus_per_env_runner=0.5)
        .build_algo()
    )
    seed_one = tiny_config(FlowSDEConfig).debugging(seed=1).build_algo()
    try:
        per_runner = two_runners.env_runner_group.foreach_env_runner(first_observations, local_env_runner=False)
        starts = [obs for runner in per_runner for obs in runner]
        starts += first_observations(seed_one.env_runner)
    finally:
        two_runners.stop()
        seed_one.stop()
    assert len(starts) == 12
    assert len(set(starts)) == 12


def test_a_restored_run_draws_new_episodes_instead_of_replaying_its_first(ray_session, tmp_path):
    """A run rebuilt from its config and restored (``rllib train --resume``, Tune's restart,
    PBT's exploit) gets new env-runner processes, which RLlib seeds as at the run's start."""
    from rllib_pirl.algorithms import FlowSDEConfig

    STARTS.clear()
    run = tiny_config(FlowSDEConfig).callbacks(RecordStarts).build_algo()
    run.train()
    first = list(STARTS[:4])
    path = run.save_to_path(str(tmp_path / "run"))
    run.stop()
    STARTS.clear()
    again = tiny_config(FlowSDEConfig).callbacks(RecordStarts).build_algo()
    try:
        again.restore_from_path(path)
        assert again.iteration == 1
        again.train()
    finally:
        again.stop()
    assert len(first) == len(STARTS[:4]) == 4
    assert not any(np.allclose(a, b) for a in first for b in STARTS[:4])


def test_an_env_rllib_rebuilds_after_a_failed_step_draws_new_episodes(ray_session, tmp_path):
    """``restart_failed_sub_environments``: RLlib rebuilds the runner's vector env after a
    failed step and resets it with the runner's seeds, which were its first episodes' seeds."""
    from conftest import register_raising_point_reach

    from rllib_pirl.algorithms import FlowSDEConfig

    flag = tmp_path / "flag"
    register_raising_point_reach("RaisingPointReachSeeds", flag)
    algo = (
        tiny_config(FlowSDEConfig)
        .environment("RaisingPointReachSeeds")
        .fault_tolerance(restart_failed_sub_environments=True)
        .callbacks(RecordStarts)
        .build_algo()
    )
    try:
        STARTS.clear()
        algo.env_runner.sample(num_timesteps=4)
        first = list(STARTS)
        flag.write_text("x")
        STARTS.clear()
        algo.env_runner.sample(num_timesteps=4)  # a step fails: rebuilt, reset, sampled again
    finally:
        algo.stop()
    assert not flag.exists() and len(first) == 4 and len(STARTS) >= 4
    assert not any(np.allclose(a, b) for a in first for b in STARTS)


def test_a_restarted_env_runner_draws_new_episodes(ray_session):
    """``restart_failed_env_runners``: Ray restarts a dead runner's process, which RLlib seeds
    as at the run's start; the algorithm's restore then gives it the seeds of its restart."""
    import time

    from rllib_pirl.algorithms import FlowSDEConfig

    first_observations = first_observations_of()
    algo = (
        tiny_config(FlowSDEConfig)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=4, num_cpus_per_env_runner=0.5)
        .fault_tolerance(restart_failed_env_runners=True)
        .build_algo()
    )
    group = algo.env_runner_group
    try:
        (first,) = group.foreach_env_runner(first_observations, local_env_runner=False)

        def die(runner):
            import os

            os._exit(1)

        group.foreach_env_runner(die, local_env_runner=False)  # marks it unhealthy; Ray restarts it
        deadline = time.monotonic() + 120
        while not algo.restore_env_runners(group):
            assert time.monotonic() < deadline, "the env runner was not restarted"
            time.sleep(1)
        (again,) = group.foreach_env_runner(first_observations, local_env_runner=False)
    finally:
        algo.stop()
    assert len(first) == len(again) == 4
    assert not set(first) & set(again)
