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


def tiny_yaml_config(train_batch: int = 64) -> str:
    """The ``config:`` body of a yaml experiment: ``tiny_config``'s small PointReach settings
    (local sampling), indented to follow ``  config:``."""
    return f"""
    train_batch_size_per_learner: {train_batch}
    minibatch_size: 32
    num_epochs: 1
    num_env_runners: 0
    num_envs_per_env_runner: 4
    action_chunk: 4
    model_config: {{model_kwargs: {{hidden_sizes: [16, 16], value_hidden_sizes: [16]}}}}
"""


def tiny_pi_rl_config(config_cls, env, env_config, variant, tokenizer, num_envs=1, **model_kwargs):
    """A tiny π0 / π0.5 (``PiConfig.tiny``) on ``env`` with a small batch, local sampling."""
    from rllib_pirl.models.pi0 import PiConfig

    kwargs = {"pi_config": PiConfig.tiny(variant).to_dict(), "tokenizer": tokenizer, "value_hidden_sizes": [16]}
    return (
        config_cls()
        .environment(env, env_config=env_config)
        .training(action_chunk=4, num_denoise_steps=3, train_batch_size_per_learner=8, minibatch_size=4, num_epochs=1)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
        .rl_module(
            model_config={"model_class": "rllib_pirl.models.pi0:PiPolicy", "model_kwargs": kwargs | model_kwargs}
        )
        .debugging(seed=0)
    )


def tiny_pi_module(variant, tokenizer, cameras=("base_camera",), model_kwargs=None, **settings):
    """A FlowRLModule around a tiny π0 / π0.5 for a Dict observation of 32-px ``cameras``, an
    8-D state and a task id, acting in 4 × 4 chunks; ``model_kwargs`` add to the model's
    arguments, ``settings`` are model_config keys (``init_seed`` 0 unless given). Returns the
    module and its observation space."""
    import gymnasium as gym
    import numpy as np

    from rllib_pirl.models.pi0 import PiConfig
    from rllib_pirl.rl_module import FlowRLModule

    image = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)
    obs_space = gym.spaces.Dict(
        {
            **{cam: image for cam in cameras},
            "state": gym.spaces.Box(-1, 1, (8,), np.float32),
            "task_id": gym.spaces.Box(0, 0, (1,), np.int64),
        }
    )
    kwargs = {"pi_config": PiConfig.tiny(variant).to_dict(), "tokenizer": tokenizer, **(model_kwargs or {})}
    model_config = {"model_class": "rllib_pirl.models.pi0:PiPolicy", "model_kwargs": kwargs, "action_chunk": 4}
    model_config.update({"init_seed": 0, **settings})
    act_space = gym.spaces.Box(-1, 1, (4, 4), np.float32)
    return FlowRLModule(observation_space=obs_space, action_space=act_space, model_config=model_config), obs_space


def assert_one_iteration_trains_the_expert(algo) -> None:
    """One ``algo.train()``: the learner trained on a finite loss and the action expert's
    weights changed."""
    import numpy as np

    model = algo.get_module().model
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.gemma_expert")}
    learner = algo.train()["learners"]["default_policy"]
    assert learner["num_module_steps_trained"] > 0 and np.isfinite(learner["policy_loss"])
    after = algo.get_module().model.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())


def point_gpu_examples_at_a_tiny_checkpoint(tmp_path, monkeypatch) -> None:
    """The GPU tuned examples name real π0 / π0.5 checkpoints by environment variable: point
    them at a tiny π0 checkpoint (and its tokenizer), so that their configs build here."""
    from rllib_pirl.models.pi0 import PiConfig, PiPolicy
    from rllib_pirl.models.pi0.inputs import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(str(tmp_path / "tok.model"), ["pick up the cube"])
    model = PiPolicy(PiConfig.tiny(), state_dim=8, camera_keys=["base_camera"], tokenizer=tokenizer)
    model.save_pretrained(str(tmp_path / "ck"))
    for var in ("PI0_CHECKPOINT", "PI05_CHECKPOINT", "PI0_LIBERO_CHECKPOINT", "PI05_LIBERO_CHECKPOINT"):
        monkeypatch.setenv(var, str(tmp_path / "ck"))
    monkeypatch.setenv("PALIGEMMA_TOKENIZER", tokenizer)


def learner_train_batch(algo, num_timesteps: int):
    """Sample ``num_timesteps`` with the algorithm's local env runner and run them through its
    learner's connector pipeline (GAE or GRPO included): the chunks' (length, terminated,
    truncated) as sampled — the pipeline truncates unfinished ones — and the default policy's
    train batch."""
    learner = algo.learner_group._learner
    episodes = algo.env_runner.sample(num_timesteps=num_timesteps, random_actions=False)
    chunks = [(len(e), e.is_terminated, e.is_truncated) for e in episodes]
    batch = learner._learner_connector(
        rl_module=learner.module, batch={}, episodes=episodes, shared_data={}, metrics=learner.metrics
    )
    return chunks, batch["default_policy"]


def learner_states(algo):
    """Each learner's module weights (torch tensors on the CPU; one for a local learner)."""
    results = algo.learner_group.foreach_learner(
        lambda learner: {
            k: v.detach().cpu().clone() for k, v in learner.module["default_policy"].unwrapped().state_dict().items()
        }
    )
    return [r.get() for r in results.result_or_errors]


def register_raising_point_reach(name: str, flag) -> None:
    """Register env ``name`` with Ray Tune: chunked PointReach (50-step limit) whose step
    raises once each time the file ``flag`` exists (and removes it) — for envs that RLlib
    rebuilds in its env runner (``restart_failed_sub_environments``)."""
    import gymnasium as gym
    from ray.tune.registry import register_env

    from rllib_pirl.envs import ActionChunkWrapper
    from rllib_pirl.envs.point_reach import PointReachEnv

    class RaisingPointReach(PointReachEnv):
        def step(self, action):
            if os.path.exists(flag):
                os.remove(flag)
                raise RuntimeError("the simulator broke")
            return super().step(action)

    register_env(
        name, lambda config: ActionChunkWrapper(gym.wrappers.TimeLimit(RaisingPointReach(), 50), config["action_chunk"])
    )
