"""rllib_pirl: πRL (Flow-Noise, Flow-SDE) for flow-matching policies on Ray RLlib.

The pure parts import without Ray: ``rllib_pirl.flow`` (the math), ``rllib_pirl.models``
(the action models), ``rllib_pirl.settings``. The RLlib parts load on first use of a name
below; loading them registers the algorithms ``FlowSDE`` / ``FlowNoise`` and the envs
(``PointReach``, ``ChunkedGym``, ``ManiSkill``, ``LIBERO``) with Ray Tune. To register
before naming them as strings in Tune, call ``rllib_pirl.register()``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: name → the module that defines it (imported on first access, PEP 562)
_LAZY = {
    "ALGORITHMS": "rllib_pirl.algorithms",
    "FlowNoise": "rllib_pirl.algorithms",
    "FlowNoiseConfig": "rllib_pirl.algorithms",
    "FlowPPOConfig": "rllib_pirl.algorithms",
    "FlowSDE": "rllib_pirl.algorithms",
    "FlowSDEConfig": "rllib_pirl.algorithms",
    "register": "rllib_pirl.algorithms",
    "FlowRLModule": "rllib_pirl.rl_module",
    "evaluate_checkpoint": "rllib_pirl.evaluation",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rllib_pirl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [  # noqa: RUF022 (the lazy names, then the version)
    "ALGORITHMS",
    "FlowNoise",
    "FlowNoiseConfig",
    "FlowPPOConfig",
    "FlowRLModule",
    "FlowSDE",
    "FlowSDEConfig",
    "evaluate_checkpoint",
    "register",
    "__version__",
]
