"""rllib_pirl: πRL (Flow-Noise, Flow-SDE) for flow-matching policies on Ray RLlib.

Importing the package registers the algorithms ``FlowSDE`` / ``FlowNoise`` and the
envs ``PointReach`` / ``ChunkedGym`` with Ray Tune.
"""

from ray.tune.registry import register_env, register_trainable

from rllib_pirl.algorithms import FlowNoise, FlowNoiseConfig, FlowPPOConfig, FlowSDE, FlowSDEConfig
from rllib_pirl.envs import ENV_CREATORS
from rllib_pirl.rl_module import FlowRLModule

ALGORITHMS = {"FlowSDE": FlowSDE, "FlowNoise": FlowNoise}

for _name, _cls in ALGORITHMS.items():
    register_trainable(_name, _cls)
for _name, _creator in ENV_CREATORS.items():
    register_env(_name, _creator)

__version__ = "0.1.0"
__all__ = ["ALGORITHMS", "FlowNoise", "FlowNoiseConfig", "FlowPPOConfig", "FlowRLModule", "FlowSDE", "FlowSDEConfig"]
