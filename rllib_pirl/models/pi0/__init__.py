"""π0 and π0.5: PaliGemma + action expert flow policies (real architectures, any size)."""

from rllib_pirl.models.pi0.config import GEMMA_SIZES, GemmaSize, PiConfig, VisionSize
from rllib_pirl.models.pi0.policy import PiPolicy

__all__ = ["GEMMA_SIZES", "GemmaSize", "PiConfig", "PiPolicy", "VisionSize"]
