"""ALiBi position biases (BLOOM, Falcon-RW): positions enter attention as a per-head linear bias, not a rotation.

Depends on ``transformers.models.bloom.modeling_bloom.build_alibi_tensor(attention_mask, num_heads, dtype)``
(public in every 5.x; the private ``_get_alibi_slopes`` exists only from 5.2x), read at position 1 for the
per-head slopes, and on the layers' use of the bias as transformers' own models build it without padding: BLOOM adds
``slopes * key_index`` (shape (batch * heads, 1, keys)) to the scaled scores through ``alibi.baddbmm`` and expects
an additive float mask; Falcon's SDPA path takes ``alibi / sqrt(head_dim)`` folded into the float mask it is given.
The bias uses absolute key indices; softmax's invariance to a constant per row makes that equal to relative ones.
"""

from __future__ import annotations

import math

import torch

from engine.hf.layers import modeling_class


def alibi_slopes(num_heads: int, device: torch.device) -> torch.Tensor:
    """The per-head slopes (float32): BLOOM's bias for one sequence, (heads, 1, keys), at key index 1."""
    build = modeling_class("transformers.models.bloom.modeling_bloom", "build_alibi_tensor")
    return build(torch.ones(1, 2, device=device), num_heads, torch.float32)[:, 0, 1]


def bloom_alibi(num_heads: int, batch: int, keys: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """BLOOM's ``alibi`` argument for ``keys`` cached plus new tokens: (batch * heads, 1, keys)."""
    bias = alibi_slopes(num_heads, device)[:, None, None] * torch.arange(keys, device=device)
    return bias.repeat(batch, 1, 1).to(dtype)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask as the additive float mask eager attention adds to its scores."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def falcon_alibi_mask(
    allowed: torch.Tensor, num_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Falcon-RW's attention mask: the ALiBi bias scaled by 1/sqrt(head_dim), blocked keys at the dtype's minimum.

    Shape (1, heads, queries, keys): SDPA broadcasts it over the batch.
    """
    keys = allowed.shape[-1]
    bias = (alibi_slopes(num_heads, device)[:, None, None] * torch.arange(keys, device=device)).to(dtype)
    bias = bias[None] / math.sqrt(head_dim)
    return torch.masked_fill(bias, ~allowed, torch.finfo(dtype).min)
