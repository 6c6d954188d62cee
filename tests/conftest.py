import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def tiny_config(config_cls, **training):
    """A small, fast configuration of either algorithm on PointReach (local sampling)."""
    import rllib_pirl  # noqa: F401

    settings = {
        "action_chunk": 4,
        "lr": 3e-4,
        "value_lr": 1e-3,
        "train_batch_size_per_learner": 128,
        "minibatch_size": 64,
        "num_epochs": 1,
    }
    settings.update(training)
    return (
        config_cls()
        .environment("PointReach")
        .training(**settings)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
        .rl_module(model_config={"model_kwargs": {"hidden_sizes": (32, 32), "value_hidden_sizes": (32,)}})
        .debugging(seed=0)
    )
