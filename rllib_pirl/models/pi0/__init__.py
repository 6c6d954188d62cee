"""π0 and π0.5: PaliGemma + action expert flow policies (real architectures, any size).

``load_pretrained(path)`` reads a lerobot, openpi, RLinf or rllib_pirl checkpoint folder
(:mod:`~rllib_pirl.models.pi0.formats`) into a :class:`PiPolicy`; its
:meth:`~PiPolicy.predict_action_chunk` acts on raw images, state and instructions.
"""

from rllib_pirl.models.pi0.config import GEMMA_SIZES, GemmaSize, PiConfig, VisionSize
from rllib_pirl.models.pi0.formats import CheckpointMismatch, read_pretrained
from rllib_pirl.models.pi0.layouts import load_pretrained, save_pretrained
from rllib_pirl.models.pi0.policy import PiPolicy

__all__ = [
    "GEMMA_SIZES",
    "CheckpointMismatch",
    "GemmaSize",
    "PiConfig",
    "PiPolicy",
    "VisionSize",
    "load_pretrained",
    "read_pretrained",
    "save_pretrained",
]
