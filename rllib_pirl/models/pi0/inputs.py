"""Observation → model inputs for π0 / π0.5, in torch: images, prompt tokens, state.

- images: resize-with-pad to the model's square size (aspect kept, centred, black
  padding), then scaled from [0, 255] to [−1, 1];
- prompt: PaliGemma's SentencePiece tokenizer (a local ``tokenizer.model`` file);
  π0: ``<bos> task \\n``; π0.5: ``<bos> Task: task, State: s_1 … s_n;\\nAction: `` with
  the normalised state discretised into 256 bins over [−1, 1];
- state / actions: one affine normalisation ``(x − loc) / scale`` built from the
  checkpoint's statistics: mean/std (``loc = mean``, ``scale = std``) or quantiles
  (``loc = (q01 + q99) / 2``, ``scale = (q99 − q01) / 2``, i.e. q01 → −1, q99 → 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

NORM_MODES = ("mean_std", "quantile", "identity")
STATE_BINS = 256


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, 3) uint8 (or float in [0, 255]) → (B, 3, size, size) float in [−1, 1].

    The longer side is resized to ``size`` (bilinear), the shorter one padded
    symmetrically with black (−1 after scaling)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (B, H, W, 3), got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        ratio = max(h / size, w / size)
        nh, nw = max(1, round(h / ratio)), max(1, round(w / ratio))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        top, left = (size - nh) // 2, (size - nw) // 2
        x = F.pad(x, (left, size - nw - left, top, size - nh - top), value=0.0)
    return x * 2.0 - 1.0


def affine_from_stats(stats: dict[str, Sequence[float]] | None, mode: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(loc, scale)`` of length ``dim`` (zero-padded dims: loc 0, scale 1)."""
    if mode not in NORM_MODES:
        raise ValueError(f"normalization mode must be one of {NORM_MODES}, got {mode!r}")
    loc, scale = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    if stats is None or mode == "identity":
        return loc, scale
    keys = ("mean", "std") if mode == "mean_std" else ("q01", "q99")
    missing = [k for k in keys if k not in stats]
    if missing:
        raise ValueError(f"{mode} normalisation needs statistics {list(keys)}, missing {missing}.")
    a, b = (np.asarray(stats[k], np.float32).reshape(-1) for k in keys)
    n = len(a)
    if n > dim:
        raise ValueError(f"Statistics have {n} dims, more than the model's {dim}.")
    if mode == "mean_std":
        loc[:n], scale[:n] = a, b + 1e-6
    else:
        loc[:n], scale[:n] = (a + b) / 2.0, (b - a) / 2.0 + 1e-6
    return loc, scale


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalised state in [−1, 1] → bin ids 0..255 (π0.5's state tokens)."""
    bins = np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]
    return np.clip(np.digitize(state, bins) - 1, 0, STATE_BINS - 1)


class PromptTokenizer:
    """PaliGemma's SentencePiece tokenizer from a local file, padded to ``max_len``."""

    def __init__(self, path: str, max_len: int):
        import sentencepiece

        if not path or not os.path.isfile(path):
            raise FileNotFoundError(
                f"Tokenizer file {path!r} not found. π0 / π0.5 need PaliGemma's SentencePiece model "
                "(tokenizer.model / paligemma_tokenizer.model, shipped with openpi and the lerobot checkpoints): "
                "pass its local path as model_kwargs.tokenizer."
            )
        self.path, self.max_len = path, max_len
        self.sp = sentencepiece.SentencePieceProcessor(model_file=path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @staticmethod
    def clean(text: str) -> str:
        return text.strip().replace("_", " ").replace("\n", " ")

    def pi0_ids(self, text: str) -> list[int]:
        return self.sp.encode(self.clean(text), add_bos=True) + self.sp.encode("\n")

    def pi05_ids(self, text: str, state_bins: Sequence[int]) -> list[int]:
        state = " ".join(str(int(b)) for b in state_bins)
        return self.sp.encode(f"Task: {self.clean(text)}, State: {state};\nAction: ", add_bos=True)

    def pad(self, ids_list: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad (truncate past ``max_len``) → (tokens, mask), both (B, max_len)."""
        tokens = torch.zeros(len(ids_list), self.max_len, dtype=torch.long)
        mask = torch.zeros(len(ids_list), self.max_len, dtype=torch.bool)
        for i, ids in enumerate(ids_list):
            ids = list(ids)[: self.max_len]
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = True
        return tokens, mask


def train_tiny_tokenizer(path: str, sentences: Sequence[str], vocab_size: int = 400) -> str:
    """Train a small SentencePiece model on ``sentences`` (tests and tiny CPU examples;
    the real models need PaliGemma's tokenizer)."""
    import io

    import sentencepiece

    digits = [" ".join(str(i) for i in range(j, j + 16)) for j in range(0, 256, 16)]
    text = list(sentences) + digits + ["Task: , State: ;\nAction: "]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path
