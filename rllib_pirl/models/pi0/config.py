"""Sizes and settings of π0 / π0.5 (any size: the real 3B ones and tiny CPU ones)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

VARIANTS = ("pi0", "pi05")


@dataclass
class GemmaSize:
    """One Gemma transformer (openpi's ``gemma_2b`` / ``gemma_300m`` or smaller)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class VisionSize:
    """The SigLIP vision tower (So400m/14 at 224 px for the real models)."""

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224


GEMMA_SIZES = {
    "gemma_2b": GemmaSize(2048, 18, 16384, 8, 1, 256),
    "gemma_300m": GemmaSize(1024, 18, 4096, 8, 1, 256),
}


@dataclass
class PiConfig:
    """Everything that fixes the architecture of a π0 / π0.5 model.

    Defaults are the real models (PaliGemma 3B: SigLIP So400m + Gemma 2B; action
    expert Gemma 300M; chunk 50, 32-D padded state/actions). ``tiny()`` gives the
    same architecture at CPU-test size.
    """

    variant: str = "pi0"  # "pi0" or "pi05"
    vlm: GemmaSize = field(default_factory=lambda: GEMMA_SIZES["gemma_2b"])
    expert: GemmaSize = field(default_factory=lambda: GEMMA_SIZES["gemma_300m"])
    vision: VisionSize = field(default_factory=VisionSize)
    vocab_size: int = 257152
    chunk_size: int = 50  # action horizon H of the model
    max_state_dim: int = 32  # states are zero-padded to this
    max_action_dim: int = 32  # actions are zero-padded to this
    max_token_len: int = 48  # prompt tokens (π0.5: 200, the state is in the prompt)
    min_period: float = 4e-3  # sinusoidal time embedding
    max_period: float = 4.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("vlm", "expert"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, GemmaSize(**getattr(self, name)))
        if isinstance(self.vision, dict):
            self.vision = VisionSize(**self.vision)
        v, e = self.vlm, self.expert
        if (v.depth, v.num_heads, v.num_kv_heads, v.head_dim) != (e.depth, e.num_heads, e.num_kv_heads, e.head_dim):
            raise ValueError(
                "The action expert attends to the VLM's keys and values layer by layer: depth, heads, KV heads "
                f"and head_dim must match, got VLM {v} and expert {e}."
            )
        if self.expert.width % 2:
            raise ValueError(f"The expert width must be even (sin/cos time embedding), got {self.expert.width}.")

    @property
    def tokens_per_image(self) -> int:
        return (self.vision.image_size // self.vision.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PiConfig:
        return cls(**data)

    @classmethod
    def real(cls, variant: str = "pi0") -> PiConfig:
        """The released π0 / π0.5 architecture (≈ 3.2–3.4 B parameters)."""
        return cls(variant=variant, max_token_len=200 if variant == "pi05" else 48)

    @classmethod
    def tiny(cls, variant: str = "pi0", **overrides) -> PiConfig:
        """Same architecture, tiny sizes (tests and CPU examples)."""
        kwargs: dict[str, Any] = {
            "variant": variant,
            "vlm": GemmaSize(64, 2, 128, 4, 1, 16),
            "expert": GemmaSize(32, 2, 64, 4, 1, 16),
            "vision": VisionSize(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8, image_size=32),
            "vocab_size": 512,
            "chunk_size": 8,
            "max_state_dim": 32,
            "max_action_dim": 8,
            "max_token_len": 128 if variant == "pi05" else 32,
        }
        kwargs.update(overrides)
        return cls(**kwargs)
