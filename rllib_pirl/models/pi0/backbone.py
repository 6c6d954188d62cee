"""PaliGemma with an action expert: the transformer of π0 and π0.5.

Built from transformers' blocks (SigLIP vision tower, Gemma layers, rotary
embedding); what transformers does not have is here: the joint attention of the
two Gemmas and π0.5's adaptive RMSNorm.

Joint attention: in every layer the VLM prefix (images + prompt) attends
bidirectionally to itself and never to the suffix; the expert's tokens attend to
the prefix keys/values *of the same layer* plus their own. So the prefix runs
once (:meth:`PaliGemmaWithExpert.prefix`) into a per-layer KV cache that every
denoising step reuses (:meth:`PaliGemmaWithExpert.suffix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GemmaConfig, GemmaModel, PaliGemmaConfig, PaliGemmaModel
from transformers.models.gemma.modeling_gemma import GemmaRotaryEmbedding, apply_rotary_pos_emb

from rllib_pirl.models.pi0.config import GemmaSize, PiConfig


class AdaRMSNorm(nn.Module):
    """π0.5's adaptive RMSNorm: scale, shift and gate from a condition c (the time):

        (s, b, g) = dense(c),   y = x / rms(x) · (1 + s) + b,

    and the residual branch it feeds is added as ``h + g · f(y)``. ``dense`` starts
    at zero weights (plain RMSNorm, gate = bias)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate


def _norm(module: nn.Module, x: torch.Tensor, cond: torch.Tensor | None):
    """``(y, gate)`` of a Gemma RMSNorm (gate None) or an :class:`AdaRMSNorm`."""
    if isinstance(module, AdaRMSNorm):
        return module(x, cond)
    return module(x), None


def _residual(h, out, gate):
    return h + out if gate is None else h + out * gate


def gemma_config(size: GemmaSize, config: PiConfig, vocab_size: int) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=size.width,
        intermediate_size=size.mlp_dim,
        num_hidden_layers=size.depth,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        head_dim=size.head_dim,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        # Gemma's special tokens (0 pad, 1 eos, 2 bos) exist only with a real vocabulary.
        **({} if vocab_size > 2 else {"pad_token_id": None, "eos_token_id": None, "bos_token_id": None}),
    )


def paligemma_config(config: PiConfig) -> PaliGemmaConfig:
    v = config.vision
    text = gemma_config(config.vlm, config, config.vocab_size).to_dict()
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": v.width,
        "intermediate_size": v.mlp_dim,
        "num_hidden_layers": v.depth,
        "num_attention_heads": v.num_heads,
        "patch_size": v.patch_size,
        "image_size": v.image_size,
        "vision_use_head": False,
        "projection_dim": config.vlm.width,
    }
    return PaliGemmaConfig(
        text_config=text, vision_config=vision, projection_dim=config.vlm.width, image_token_id=config.vocab_size - 1
    )


@dataclass
class PrefixCache:
    """One observation's prefix, computed once and reused by every denoising step."""

    keys: list[torch.Tensor]  # per layer (B, kv_heads, P, head_dim), rotary applied
    values: list[torch.Tensor]
    mask: torch.Tensor  # (B, P) bool: valid prefix tokens
    output: torch.Tensor  # (B, P, vlm width) final-normed prefix output (π0.5's value head)

    @property
    def next_position(self) -> torch.Tensor:
        """(B,) position id of the first suffix token."""
        return self.mask.sum(-1)


def _attention(attn, x, cos, sin, mask, past_kv=None):
    """Gemma self-attention of ``x`` over (past keys/values ++ its own); ``mask`` is
    (B, 1, T, S) or (B, 1, 1, S) bool, True = attend. Returns the output and x's own (k, v).

    Grouped-query attention with g query heads per key/value head runs as ordinary
    attention of the g·T queries of a group over its one K/V: q (B, kv·g, T, d) →
    (B, kv, g·T, d), the mask's rows tiled g times. Exactly the same numbers, and no
    ``enable_gqa`` nor g×-expanded K/V: SDPA's fused kernels (CUDA's memory-efficient,
    the CPU's flash) take a boolean mask, not GQA with one, so this never falls back to
    the math kernel and its full fp32 attention matrix."""
    b, t, _ = x.shape
    shape = (b, t, -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    keys, values = (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
    kv_heads = keys.shape[1]
    groups = q.shape[1] // kv_heads
    q = q.reshape(b, kv_heads, groups * t, attn.head_dim)
    if mask.shape[2] > 1:
        mask = mask.repeat(1, 1, groups, 1)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
    out = out.reshape(b, kv_heads * groups, t, attn.head_dim)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)), (k, v)


def decoder_layer(layer, h, cos, sin, mask, past_kv=None, cond=None):
    """One Gemma decoder layer (pre-norm attention and MLP), with π0.5's gated
    residuals when its norms are :class:`AdaRMSNorm`. Returns (h, (k, v))."""
    y, gate = _norm(layer.input_layernorm, h, cond)
    out, kv = _attention(layer.self_attn, y, cos, sin, mask, past_kv)
    h = _residual(h, out, gate)
    y, gate = _norm(layer.post_attention_layernorm, h, cond)
    return _residual(h, layer.mlp(y), gate), kv


class PaliGemmaWithExpert(nn.Module):
    """``paligemma`` (SigLIP + projector + Gemma 2B) and ``gemma_expert`` (Gemma 300M,
    with adaptive norms for π0.5); module names follow the openpi / lerobot layout."""

    def __init__(self, config: PiConfig, dtype: torch.dtype = torch.float32, frozen_vlm: bool = True):
        """``dtype``: what the transformer computes in. In bfloat16: mixed precision — a frozen
        VLM is built and stored in bf16 (half the memory, it never changes; no fp32 copy first);
        trainable weights (the expert, a trained VLM) stay float32 master weights that the
        optimizer updates, and both run under ``torch.autocast`` in bf16 (matmuls and
        attention in bf16, norms in fp32)."""
        super().__init__()
        self.config = config
        self.dtype = dtype
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype if frozen_vlm else torch.float32)
        try:
            self.paligemma = PaliGemmaModel(paligemma_config(config))
        finally:
            torch.set_default_dtype(default)
        expert_config = gemma_config(config.expert, config, vocab_size=1)
        self.gemma_expert = GemmaModel(expert_config)
        self.gemma_expert.embed_tokens = None  # the expert never embeds tokens
        if config.variant == "pi05":
            width, eps = config.expert.width, config.rms_norm_eps
            for layer in self.gemma_expert.layers:
                layer.input_layernorm = AdaRMSNorm(width, width, eps)
                layer.post_attention_layernorm = AdaRMSNorm(width, width, eps)
            self.gemma_expert.norm = AdaRMSNorm(width, width, eps)
        self.vlm_rotary = GemmaRotaryEmbedding(self.paligemma.config.text_config)
        self.expert_rotary = GemmaRotaryEmbedding(expert_config)

    #: The dtype the transformer computes in: float32, or bfloat16 (mixed precision).
    dtype: torch.dtype = torch.float32

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    @property
    def language_model(self):
        return self.paligemma.language_model

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, S, S) in [−1, 1] → (B, N·tokens_per_image, vlm width)."""
        b = images.shape[0]
        features = self.paligemma.vision_tower(pixel_values=images.flatten(0, 1)).last_hidden_state
        return self.paligemma.multi_modal_projector(features).reshape(b, -1, self.config.vlm.width)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids → embeddings scaled by sqrt(width) (Gemma's convention)."""
        return self.language_model.embed_tokens(tokens)

    def prefix(self, images: torch.Tensor, image_mask: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor):
        """Run the VLM once over [image tokens, prompt tokens] → :class:`PrefixCache`.

        ``image_mask`` (B, N) marks real cameras, ``token_mask`` (B, L) real tokens;
        masked tokens are neither attended to nor counted in the positions."""
        with self._autocast(images.device):
            return self._prefix(images.to(self.dtype), image_mask, tokens, token_mask)

    def _prefix(self, images, image_mask, tokens, token_mask):
        img = self.embed_images(images)
        per_image = img.shape[1] // images.shape[1]
        h = torch.cat([img, self.embed_tokens(tokens).to(img.dtype)], dim=1)
        mask = torch.cat([image_mask.bool().repeat_interleave(per_image, dim=1), token_mask.bool()], dim=1)
        positions = mask.long().cumsum(-1) - 1
        cos, sin = self.vlm_rotary(h, positions)
        attend = mask[:, None, None, :]
        keys, values = [], []
        for layer in self.language_model.layers:
            h, (k, v) = decoder_layer(layer, h, cos, sin, attend)
            keys.append(k)
            values.append(v)
        return PrefixCache(keys, values, mask, self.language_model.norm(h))

    def suffix(
        self, cache: PrefixCache, tokens: torch.Tensor, causal_head: int = 0, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the expert over suffix embeddings (B, T, expert width) attending to the
        cached prefix. The first ``causal_head`` tokens (π0's state token) form a block
        that the later tokens see but that does not see them; the rest attend to every
        suffix token. ``cond`` conditions π0.5's adaptive norms. Returns the final-normed
        expert output (B, T, expert width), in float32."""
        with self._autocast(tokens.device):
            return self._suffix(cache, tokens.to(self.dtype), causal_head, cond)

    def _suffix(self, cache, tokens, causal_head, cond):
        b, t, _ = tokens.shape
        positions = cache.next_position[:, None] + torch.arange(t, device=tokens.device)[None, :]
        cos, sin = self.expert_rotary(tokens, positions)
        block = (torch.arange(t, device=tokens.device) >= causal_head).long()  # 0: head block, 1: the rest
        own = block[None, :] <= block[:, None]  # row i sees column j
        mask = torch.cat([cache.mask[:, None, :].expand(b, t, -1), own[None].expand(b, t, t)], dim=-1)[:, None]
        h = tokens
        cond = cond.to(self.dtype) if cond is not None else None
        for i, layer in enumerate(self.gemma_expert.layers):
            h, _ = decoder_layer(layer, h, cos, sin, mask, (cache.keys[i], cache.values[i]), cond)
        out, _ = _norm(self.gemma_expert.norm, h, cond)
        return out.float()
