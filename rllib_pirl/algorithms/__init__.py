"""Flow-SDE and Flow-Noise: configs, algorithms, the learner's loss."""

from rllib_pirl.algorithms.algorithm import FlowNoise, FlowSDE
from rllib_pirl.algorithms.config import FlowNoiseConfig, FlowPPOConfig, FlowSDEConfig
from rllib_pirl.algorithms.learner import FlowPPOTorchLearner

__all__ = ["FlowNoise", "FlowNoiseConfig", "FlowPPOConfig", "FlowPPOTorchLearner", "FlowSDE", "FlowSDEConfig"]
