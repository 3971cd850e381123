"""Attention masks in the form transformers' SDPA attention path accepts from a caller.

We select the ``sdpa`` implementation on every config we load and pass each layer a boolean mask of shape
(1, 1, queries, keys) where True means "may attend", or None where SDPA's own causal handling is exact:
transformers' ``sdpa_attention_forward`` hands a given mask to ``scaled_dot_product_attention`` as it is and
uses ``is_causal`` only when the mask is None and there is more than one query.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

ATTENTION_IMPLEMENTATION = "sdpa"


def use_sdpa(config: PretrainedConfig) -> PretrainedConfig:
    """Make the layers built from ``config`` use the attention path whose mask contract is described above."""
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    return config


def attention_mask(position: int, new_tokens: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for ``new_tokens`` queries after ``position`` cached tokens.

    None where scaled_dot_product_attention's own causal handling is exact: one new token, or a first step.
    """
    total = position + new_tokens
    if (window is None or total <= window) and (new_tokens == 1 or position == 0):
        return None
    return allowed_keys(position, new_tokens, window, device)


def allowed_keys(position: int, new_tokens: int, window: int | None, device: torch.device) -> torch.Tensor:
    """The causal (and windowed) mask, always materialized: (1, 1, queries, keys), True = may attend.

    Layers whose attention does not apply causality itself (BLOOM's, or any that takes a float bias) need it whole.
    """
    total = position + new_tokens
    queries = torch.arange(position, total, device=device)[:, None]
    keys = torch.arange(total, device=device)[None, :]
    allowed = keys <= queries
    if window is not None:
        allowed &= (queries - keys) < window
    return allowed[None, None]


def row_masks(row_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """Masks of a batch of one-token rows at different positions, over keys padded to the longest row:
    (batch, 1, 1, keys), True = may attend; row r sees keys 0..row_positions[r] (within ``window``)."""
    keys = torch.arange(int(row_positions.max()) + 1, device=row_positions.device)[None, :]
    queries = row_positions[:, None]
    allowed = keys <= queries
    if window is not None:
        allowed &= (queries - keys) < window
    return allowed[:, None, None, :]
