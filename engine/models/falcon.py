"""Falcon (7B, 40B, 180B and Falcon-RW): fused query/key/value projections, LayerNorm, rotary or ALiBi positions.

What differs from the Llama family: tensors live under ``transformer.h.N``; the layer takes its cache as
``layer_past`` and an ``alibi`` argument (None for rotary models); its cache holds one key head for multi-query
models (7B) and every query head in the "new decoder architecture" (40B, 180B), which broadcasts its key groups
before caching. Falcon-RW (``alibi=True``) has no rotary embedding: its mask carries the ALiBi bias.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PretrainedConfig

from engine.hf.alibi import falcon_alibi_mask
from engine.hf.layers import build_layer_norm
from engine.hf.masks import allowed_keys
from engine.models.base import ModelFamily, StepInputs


class FalconFamily(ModelFamily):
    def make_positions(self, config: PretrainedConfig) -> nn.Module | None:
        return None if config.alibi else super().make_positions(config)

    def layer_inputs(self, step: StepInputs, index: int) -> dict[str, Any]:
        if step.positions is not None:
            return {**super().layer_inputs(step, index), "alibi": None}
        config, hidden = step.config, step.hidden
        heads = config.num_attention_heads

        def mask():
            allowed = allowed_keys(step.position, step.new_tokens, None, hidden.device)
            return falcon_alibi_mask(allowed, heads, config.hidden_size // heads, hidden.dtype, hidden.device)

        # Falcon's SDPA path reads the bias from the mask; ``alibi`` only has to be non-None to skip the rotation
        return {"attention_mask": step.shared("mask", mask), "alibi": step.shared("mask", mask)}

    def kv_shape(self, config: PretrainedConfig) -> tuple[int, int]:
        heads = config.num_attention_heads
        head_dim = config.hidden_size // heads
        if config.new_decoder_architecture:
            return heads, head_dim
        if config.multi_query:
            return 1, head_dim
        return config.num_kv_heads or heads, head_dim

    def make_norm(self, config: PretrainedConfig) -> nn.Module:
        return build_layer_norm(config)


FALCON = FalconFamily(
    "falcon",
    ("falcon",),
    "transformers.models.falcon.modeling_falcon",
    "Falcon",
    layers_prefix="transformer.h.",
    embed_weight="transformer.word_embeddings.weight",
    norm_prefix="transformer.ln_f.",
)
