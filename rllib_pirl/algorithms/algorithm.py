"""Flow-SDE and Flow-Noise as RLlib algorithms (PPO's training loop, our loss)."""

from __future__ import annotations

from ray.rllib.algorithms.ppo import PPO
from ray.rllib.utils.annotations import override


class FlowSDE(PPO):
    """πRL Flow-SDE. Configure with :class:`rllib_pirl.FlowSDEConfig`."""

    @classmethod
    @override(PPO)
    def get_default_config(cls):
        from rllib_pirl.algorithms.config import FlowSDEConfig

        return FlowSDEConfig()


class FlowNoise(PPO):
    """πRL Flow-Noise. Configure with :class:`rllib_pirl.FlowNoiseConfig`."""

    @classmethod
    @override(PPO)
    def get_default_config(cls):
        from rllib_pirl.algorithms.config import FlowNoiseConfig

        return FlowNoiseConfig()
