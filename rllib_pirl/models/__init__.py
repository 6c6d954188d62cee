"""Action models behind one small interface (:class:`FlowActionModel`)."""

from rllib_pirl.models.base import FlowActionModel
from rllib_pirl.models.mlp import StateFlowPolicy

__all__ = ["FlowActionModel", "StateFlowPolicy"]
