"""Flow-SDE and Flow-Noise: configs and algorithms (``flow_ppo``), the learner's loss
(``learner``). Importing this package registers the algorithms and the envs with Ray Tune."""

from rllib_pirl.algorithms.flow_ppo import FlowNoise, FlowNoiseConfig, FlowPPOConfig, FlowSDE, FlowSDEConfig
from rllib_pirl.algorithms.learner import FlowPPOTorchLearner

#: The algorithms by their registered names (what a yaml's ``run:`` names).
ALGORITHMS = {"FlowSDE": FlowSDE, "FlowNoise": FlowNoise}


def register() -> None:
    """Register the algorithms (``FlowSDE``, ``FlowNoise``) and the envs of
    ``rllib_pirl.envs.ENVS`` with Ray Tune (idempotent; done on import)."""
    from ray.tune.registry import register_env, register_trainable

    from rllib_pirl.envs import ENVS

    for name, cls in ALGORITHMS.items():
        register_trainable(name, cls)
    for name, entry in ENVS.items():
        register_env(name, entry.creator)


register()

__all__ = [
    "ALGORITHMS",
    "FlowNoise",
    "FlowNoiseConfig",
    "FlowPPOConfig",
    "FlowPPOTorchLearner",
    "FlowSDE",
    "FlowSDEConfig",
    "register",
]
