"""Gemma 3 (text): interleaved sliding-window and global layers, each type with its own rotary frequencies.

What differs from the Llama family: the layer type (``config.layer_types``) picks both the window and the rotary
table (``Gemma3RotaryEmbedding(hidden, position_ids, layer_type)``); the client multiplies token embeddings by
sqrt(hidden size) and ties the LM head to them; the final logits may be soft-capped. Gemma's RMSNorm scales by
(1 + weight), which its own norm class does.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from engine.hf.layers import rotary_cos_sin_of_type
from engine.models.base import ModelFamily, StepInputs


class Gemma3Family(ModelFamily):
    def position_embeddings(self, step: StepInputs, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_type = step.config.layer_types[index]
        return step.shared(
            ("rotary", layer_type),
            lambda: rotary_cos_sin_of_type(step.positions, step.hidden, step.position_ids, layer_type),
        )

    def embed_scale(self, config: PretrainedConfig) -> float | None:
        return config.hidden_size**0.5

    def logit_softcap(self, config: PretrainedConfig) -> float | None:
        return getattr(config, "final_logit_softcapping", None)


GEMMA3 = Gemma3Family("gemma3", ("gemma3_text",), "transformers.models.gemma3.modeling_gemma3", "Gemma3")
