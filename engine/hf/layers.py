"""Find a family's modeling classes in transformers and build the pieces a span needs.

Depends on transformers naming classes ``<Prefix>DecoderLayer``, ``<Prefix>RotaryEmbedding`` and
``<Prefix>RMSNorm`` in ``transformers.models.<family>.modeling_<family>``, on ``DecoderLayer(config, index)``
(the index picks the layer's slot in the cache), on ``RotaryEmbedding(config)`` called as
``rotary(hidden, position_ids) -> (cos, sin)`` (Gemma 3's takes a third argument, the layer type, and keeps
one frequency table per type), and on ``RMSNorm(hidden_size, eps=...)``. Falcon's and BLOOM's layers return
``(hidden, attention weights)`` where the others return the hidden states alone; their norms are
``nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)``.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from transformers import PretrainedConfig


def modeling_class(module: str, name: str) -> type[nn.Module]:
    """``name`` from transformers' modeling module ``module``, with a clear error if this version lacks it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        import transformers

        raise ImportError(
            f"transformers {transformers.__version__} has no {module}.{name}; "
            "install the versions in requirements.lock or update engine/hf/layers.py"
        ) from error


def build_decoder_layer(layer_class: type[nn.Module], config: PretrainedConfig, index: int) -> nn.Module:
    return layer_class(config, index)


def build_rotary(rotary_class: type[nn.Module], config: PretrainedConfig) -> nn.Module:
    return rotary_class(config)


def rotary_cos_sin(
    rotary: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rotary(hidden, position_ids)


def rotary_cos_sin_of_type(
    rotary: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor, layer_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of a rotary module with one table per layer type (Gemma 3: sliding and full attention)."""
    return rotary(hidden, position_ids, layer_type)


def layer_hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden states a decoder layer returned, whether alone or first of a tuple."""
    return output[0] if isinstance(output, tuple) else output


def build_layer_norm(config: PretrainedConfig) -> nn.Module:
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


def build_rms_norm(norm_class: type[nn.Module], config: PretrainedConfig) -> nn.Module:
    return norm_class(config.hidden_size, eps=config.rms_norm_eps)
