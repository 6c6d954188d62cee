"""``advantage_normalization: task``: GAE's advantages standardised within each task of a
multi-task train batch (the formula on hand-made rows, through the learner's connector
pipeline on a two-task ManiSkill batch, and the bad settings)."""

import numpy as np
import pytest
import torch
from conftest import learner_train_batch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from rllib_pirl.algorithms import FlowNoiseConfig, FlowSDEConfig
from rllib_pirl.algorithms.task_advantages import standardize_per_task


def test_each_task_gets_the_formula_over_its_own_rows_and_masked_rows_get_zero():
    advantages = torch.tensor([1.0, 2.0, 3.0, 10.0, 30.0, 99.0, 5.0, 5.0])
    tasks = torch.tensor([[0], [0], [0], [1], [1], [1], [2], [2]])
    mask = torch.tensor([True, True, True, True, True, False, True, True])
    out = standardize_per_task(advantages, tasks, mask)
    a0, a1 = np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0])  # the masked 99 belongs to no task
    expected = [*((a0 - a0.mean()) / a0.std()), *((a1 - a1.mean()) / a1.std()), 0.0, 0.0, 0.0]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)  # task 2 (no spread): 0, not ±inf
    # An affine change of the whole batch (RLlib's batch standardisation before it) changes nothing.
    assert standardize_per_task(3.0 * advantages - 7.0, tasks, mask).tolist() == pytest.approx(expected, abs=1e-5)


def two_task_maniskill(config_cls=FlowSDEConfig, **training):
    settings = {
        "action_chunk": 5,
        "advantage_normalization": "task",
        "train_batch_size_per_learner": 32,
        "minibatch_size": 32,
        "num_epochs": 1,
    }
    return (
        config_cls()
        .environment(
            "ManiSkill",
            env_config={"tasks": ["PushCube-v1", "PullCube-v1"], "max_episode_steps": 15, "backend": "auto"},
        )
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .training(**(settings | training))
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": [16], "value_hidden_sizes": [16]}})
        .debugging(seed=4)
    )


def test_the_learner_standardises_each_tasks_advantages(ray_session):
    """The learner's connector pipeline on real two-task episodes: inside the loss mask each
    task's advantages have mean 0 and std 1 (the batch-wide standardisation gives that only
    for the batch as a whole); then the algorithm trains with them."""
    algo = two_task_maniskill().build_algo()
    try:
        _, batch = learner_train_batch(algo, 32)
        advantages = batch[Postprocessing.ADVANTAGES]
        tasks = torch.as_tensor(batch[Columns.OBS]["task_id"]).reshape(-1)
        inside = batch[Columns.LOSS_MASK].reshape(-1).bool()
        assert set(tasks[inside].tolist()) == {0, 1}
        for task in (0, 1):
            values = advantages[inside & (tasks == task)]
            assert float(values.mean()) == pytest.approx(0.0, abs=1e-5)
            assert float(values.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
        assert torch.all(advantages[~inside] == 0)
        result = algo.train()
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "config, message",
    [
        (two_task_maniskill(advantage_normalization="per_task"), "advantage_normalization must be one of"),
        (
            two_task_maniskill(FlowNoiseConfig, advantage_estimator="grpo", group_size=2),
            "GRPO's are standardised within each group",
        ),
        (two_task_maniskill().environment("PointReach"), "env 'PointReach' has no task ids"),
    ],
)
def test_bad_task_normalisation_settings_are_rejected_before_ray_starts(config, message):
    with pytest.raises(ValueError, match=message):
        config.validate()
