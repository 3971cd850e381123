"""BLOOM (the paper's 176B model): ALiBi positions, fused query/key/value projections, LayerNorm everywhere.

Positions are no rotation here: each layer adds a per-head linear bias over key indices (``alibi``) to its
attention scores, and applies the mask it is given as an additive float mask, with no causal handling of its own,
so every multi-token step gets the causal mask whole. The client normalizes the token embeddings
(``word_embeddings_layernorm``) before block 0.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PretrainedConfig

from engine.hf.alibi import additive_mask, bloom_alibi
from engine.hf.layers import build_layer_norm
from engine.hf.masks import allowed_keys
from engine.models.base import ModelFamily, StepInputs


class BloomFamily(ModelFamily):
    def make_positions(self, config: PretrainedConfig) -> nn.Module | None:
        return None

    def layer_inputs(self, step: StepInputs, index: int) -> dict[str, Any]:
        hidden = step.hidden
        keys = step.position + step.new_tokens
        heads = step.config.num_attention_heads

        def mask():
            if step.new_tokens == 1:
                return None  # one query may attend to every cached key
            allowed = allowed_keys(step.position, step.new_tokens, None, hidden.device)
            return additive_mask(allowed, hidden.dtype)

        return {
            "alibi": step.shared(
                "alibi", lambda: bloom_alibi(heads, hidden.shape[0], keys, hidden.dtype, hidden.device)
            ),
            "attention_mask": step.shared("mask", mask),
        }

    def sliding_window(self, config: PretrainedConfig, index: int) -> int | None:
        return None

    def kv_shape(self, config: PretrainedConfig) -> tuple[int, int]:
        heads = config.num_attention_heads
        return heads, config.hidden_size // heads

    def make_norm(self, config: PretrainedConfig) -> nn.Module:
        return build_layer_norm(config)

    def embed_norm_prefix(self, config: PretrainedConfig) -> str | None:
        return "transformer.word_embeddings_layernorm."


BLOOM = BloomFamily(
    "bloom",
    ("bloom",),
    "transformers.models.bloom.modeling_bloom",
    "Bloom",
    layers_prefix="transformer.h.",
    embed_weight="transformer.word_embeddings.weight",
    norm_prefix="transformer.ln_f.",
    layer_suffix="Block",
)
