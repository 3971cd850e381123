"""The questions a model family answers, so that the generic server and client code never branch on a family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from engine.hf.layers import build_decoder_layer, build_rms_norm, build_rotary, modeling_class, rotary_cos_sin


@dataclass(frozen=True)
class ModelFamily:
    """One family of decoder-only models whose layers transformers implements.

    ``module`` is the transformers modeling module and ``class_prefix`` the prefix of its class names
    (``LlamaDecoderLayer``, ``LlamaRotaryEmbedding``, ``LlamaRMSNorm``). Families that differ in more than
    names subclass this and override the method that differs.
    """

    name: str
    model_types: tuple[str, ...]
    module: str
    class_prefix: str
    layers_prefix: str = "model.layers."
    embed_weight: str = "model.embed_tokens.weight"
    norm_prefix: str = "model.norm."
    head_weight: str = "lm_head.weight"

    def _class(self, suffix: str) -> type[nn.Module]:
        return modeling_class(self.module, f"{self.class_prefix}{suffix}")

    def block_prefix(self, index: int) -> str:
        """Prefix of every tensor of block ``index`` in the checkpoint."""
        return f"{self.layers_prefix}{index}."

    def make_layer(self, config: PretrainedConfig, index: int) -> nn.Module:
        """An empty decoder layer; its global ``index`` selects its slot in the attention cache."""
        return build_decoder_layer(self._class("DecoderLayer"), config, index)

    def make_rotary(self, config: PretrainedConfig) -> nn.Module:
        return build_rotary(self._class("RotaryEmbedding"), config)

    def make_norm(self, config: PretrainedConfig) -> nn.Module:
        return build_rms_norm(self._class("RMSNorm"), config)

    def position_embeddings(
        self, rotary: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) pair every layer of the span shares for these positions."""
        return rotary_cos_sin(rotary, hidden, position_ids)

    def sliding_window(self, config: PretrainedConfig, index: int) -> int | None:
        """Width of block ``index``'s attention window, or None where it sees the whole prefix."""
        layer_types = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if not window:
            return None
        if layer_types is not None and layer_types[index] != "sliding_attention":
            return None
        if getattr(config, "use_sliding_window", True) is False:
            return None
        return int(window)

    def max_context(self, config: PretrainedConfig) -> int:
        return int(getattr(config, "max_position_embeddings", 2048))

    def kv_shape(self, config: PretrainedConfig) -> tuple[int, int]:
        """(key/value heads, head dimension) of one block's attention cache."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return getattr(config, "num_key_value_heads", None) or heads, head_dim
