"""Observation → model inputs for π0 / π0.5, in torch: images, prompt tokens, state.

- images: resize-with-pad to the model's square size (aspect kept, centred, black
  padding; the shorter side ``int(h / ratio)`` as openpi and lerobot compute it), then
  scaled to [−1, 1];
- prompt (``PROMPT_FORMATS``), with PaliGemma's SentencePiece tokenizer (a local
  ``tokenizer.model`` file) and the task cleaned (``strip``, ``_`` and newlines → spaces):

  - ``task`` (π0; openpi's π0.5 with ``discrete_state_input=False``):
    ``<bos> task`` followed by ``"\n"`` tokenised on its own (openpi);
  - ``task_lerobot`` (lerobot's π0): ``<bos>`` + the uncleaned ``task + "\n"`` tokenised in
    one piece (lerobot's ``Pi0NewLineProcessor`` then its tokenizer);
  - ``task_state`` (π0.5): ``<bos> Task: task, State: s_1 … s_n;\nAction: `` with the
    normalised state discretised into 256 bins over [−1, 1] — ``digitize(s, linspace(−1, 1,
    257)[:−1]) − 1``, not clipped (a state below −1 gives ``-1``, as in openpi and lerobot);

- state / actions: one affine normalisation ``(x − loc) / scale`` per feature, from the
  checkpoint's statistics (``NORM_MODES``), with ``d = b − a`` for the mode's pair (a, b):

  ============  ==========  ========================  =================================
  mode          stats       loc                       scale
  ============  ==========  ========================  =================================
  mean_std      mean, std   mean                      std + ε
  min_max       min, max    min + d' / 2              d' / 2   (x: min → −1, max → 1)
  quantile      q01, q99    q01 + d' / 2              d' / 2
  quantile10    q10, q90    q10 + d' / 2              d' / 2
  identity      —           0                         1
  ============  ==========  ========================  =================================

  where the convention (``NORM_CONVENTIONS``) fixes ε and d': ``openpi`` (openpi's
  ``Normalize`` / ``Unnormalize``; also our own SFT): ε = 1e-6 and d' = d + ε; ``lerobot``
  (its ``NormalizerProcessorStep``, ε = its ``eps``, 1e-8 by default): d' = d, or ε where
  d = 0. (lerobot's un-normaliser multiplies by std without ε: a relative difference of 1e-8.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: mode → the statistics it reads
NORM_STATS = {
    "mean_std": ("mean", "std"),
    "min_max": ("min", "max"),
    "quantile": ("q01", "q99"),
    "quantile10": ("q10", "q90"),
    "identity": (),
}
NORM_MODES = tuple(NORM_STATS)
NORM_CONVENTIONS = {"openpi": 1e-6, "lerobot": 1e-8}  # convention → its default ε
PROMPT_FORMATS = ("task", "task_lerobot", "task_state")
STATE_BINS = 256


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """Camera images → (B, 3, size, size) float in [−1, 1].

    Takes the env's (B, H, W, 3) (uint8, or float in [0, 255]) and lerobot's (B, 3, H, W)
    (float in [0, 1], or uint8). The longer side is resized to ``size`` (bilinear), the
    shorter one padded symmetrically with black (−1 after scaling)."""
    if images.ndim == 4 and images.shape[-1] == 3:
        x = images.permute(0, 3, 1, 2).float() / 255.0
    elif images.ndim == 4 and images.shape[1] == 3:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    else:
        raise ValueError(f"Expected camera images of shape (B, H, W, 3) or (B, 3, H, W), got {tuple(images.shape)}")
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        ratio = max(h / size, w / size)
        nh, nw = max(1, int(h / ratio)), max(1, int(w / ratio))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        top, left = (size - nh) // 2, (size - nw) // 2
        x = F.pad(x, (left, size - nw - left, top, size - nh - top), value=0.0)
    return x * 2.0 - 1.0


def affine_from_stats(
    stats: dict[str, Sequence[float]] | None,
    mode: str,
    dim: int,
    convention: str = "openpi",
    eps: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(loc, scale)`` of length ``dim`` (the module docstring's table; zero-padded dims:
    loc 0, scale 1)."""
    if mode not in NORM_STATS:
        raise ValueError(f"normalization mode must be one of {NORM_MODES}, got {mode!r}")
    if convention not in NORM_CONVENTIONS:
        raise ValueError(f"normalization convention must be one of {tuple(NORM_CONVENTIONS)}, got {convention!r}")
    eps = NORM_CONVENTIONS[convention] if eps is None else float(eps)
    loc, scale = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    if stats is None or mode == "identity":
        return loc, scale
    keys = NORM_STATS[mode]
    missing = [k for k in keys if k not in stats]
    if missing:
        raise ValueError(
            f"{mode} normalisation needs the statistics {list(keys)}; the checkpoint has {sorted(stats)}, "
            f"not {missing}."
        )
    a, b = (np.asarray(stats[k], np.float64).reshape(-1) for k in keys)
    n = len(a)
    if n > dim:
        raise ValueError(f"Statistics have {n} dims, more than the model's {dim}.")
    if mode == "mean_std":
        loc[:n], scale[:n] = a, b + eps
    else:
        d = b - a
        d = d + eps if convention == "openpi" else np.where(d == 0, eps, d)
        loc[:n], scale[:n] = a + d / 2.0, d / 2.0
    return loc, scale


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalised state → π0.5's bin ids: 0..255 over [−1, 1], −1 below (not clipped, as
    openpi and lerobot)."""
    bins = np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]
    return np.digitize(state, bins) - 1


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

    def ids(self, fmt: str, text: str, state_bins: Sequence[int] | None = None) -> list[int]:
        """Token ids of one prompt in format ``fmt`` (module docstring)."""
        if fmt == "task":
            return self.sp.encode(self.clean(text), add_bos=True) + self.sp.encode("\n")
        if fmt == "task_lerobot":
            return self.sp.encode(text if text.endswith("\n") else text + "\n", add_bos=True)
        if fmt == "task_state":
            state = " ".join(str(int(b)) for b in state_bins)
            return self.sp.encode(f"Task: {self.clean(text)}, State: {state};\nAction: ", add_bos=True)
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {fmt!r}")

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
    the real models need PaliGemma's tokenizer). Like PaliGemma's (Gemma's) tokenizer it
    adds no dummy prefix space, so ``encode("\n")`` is the one newline piece."""
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
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path
