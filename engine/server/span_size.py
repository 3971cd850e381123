"""How many blocks a server serves when it is not told: as many as fit its memory, with room for attention caches.

The memory model has one term per item a server holds (``BlockCost``):

- per block: its weights; a second copy of them when the server may move (a rebalancing move loads the new span
  next to the old one and holds both until the swap); its slice of the attention-cache budget (``cache_tokens``
  tokens of keys and values on each block); and the input a recomputing backward keeps of every block (the
  largest request's hidden states: the backward recomputes and differentiates one block at a time);
- once: the largest request's activations through one block, autograd graph included, and the training
  activation store (``--training-cache-mb``: forward graphs kept for their backward).

On CPU the budget is a RAM limit (``--memory-budget`` GiB, or a fraction of the RAM available now); on a GPU it is
the free GPU memory (capped by ``--memory-budget`` when given).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch
from torch import nn
from transformers import PretrainedConfig

from engine.models.registry import get_family
from engine.models.span import SpanCache
from engine.quantization import linear_weight_bytes

GIB = 2**30
# Share of the RAM available at start that a CPU server takes when no budget is given: the rest stays with the
# volunteer's own programs and the OS page cache.
DEFAULT_RAM_FRACTION = 0.5
# GPU memory left untouched for the CUDA context, allocator fragmentation and other processes' small allocations.
GPU_HEADROOM_BYTES = 512 * 2**20


@dataclass(frozen=True)
class BlockCost:
    """Bytes a span takes: the per-block terms, paid for every block, and the terms paid once (see the docstring)."""

    weight_bytes: int
    cache_bytes: int
    reserve_bytes: int  # once: one request's activations through one block (with its graph, in a backward)
    move_bytes: int = 0  # per block: the second copy of the weights during a move (0 for a server that never moves)
    backward_bytes: int = 0  # per block: the block input a recomputing backward keeps
    training_bytes: int = 0  # once: the activation store of forwards kept for their backward

    @property
    def per_block(self) -> int:
        return self.weight_bytes + self.move_bytes + self.cache_bytes + self.backward_bytes

    @property
    def fixed_bytes(self) -> int:
        return self.reserve_bytes + self.training_bytes


def block_weight_bytes(config: PretrainedConfig, dtype: torch.dtype, quantization: str = "none") -> int:
    """Parameter and buffer bytes of one block in ``dtype``, counted on the meta device (nothing is allocated).

    With ``quantization``, the weights of the linear layers the family lets quantize count at their quantized size.
    """
    family = get_family(config)
    with torch.device("meta"):
        layer = family.make_layer(config, 0)
    size = torch.empty((), dtype=dtype).element_size()
    quantized = set()
    total = 0
    if quantization != "none":
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and family.quantizable(name, module):
                quantized.add(id(module.weight))
                total += linear_weight_bytes(module.out_features, module.in_features, quantization, size)
    tensors = [tensor for tensor in [*layer.parameters(), *layer.buffers()] if id(tensor) not in quantized]
    return total + sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in tensors)


def block_cost(
    config: PretrainedConfig,
    dtype: torch.dtype,
    cache_tokens: int,
    max_request_tokens: int,
    training_cache_bytes: int = 0,
    movable: bool = False,
    quantization: str = "none",
) -> BlockCost:
    """The memory model of a span (see the module docstring); ``movable``: the server may rebalance.

    The reserve holds the activations of one request of ``max_request_tokens`` tokens through one block with its
    autograd graph: per token about 8 hidden-sized tensors (norm outputs, projections' inputs, attention's queries,
    keys, values and output, residuals) and 4 intermediate-sized ones (the MLP's gate, up, activation and product),
    which also covers a forward's working set (input, output and the MLP's three intermediates).
    """
    family = get_family(config)
    size = torch.empty((), dtype=dtype).element_size()
    weights = block_weight_bytes(config, dtype, quantization)
    cache = SpanCache.bytes_per_token(1, family.kv_shape(config), dtype) * cache_tokens
    reserve = max_request_tokens * (8 * config.hidden_size + 4 * config.intermediate_size) * size
    backward = max_request_tokens * config.hidden_size * size
    return BlockCost(weights, cache, reserve, weights if movable else 0, backward, training_cache_bytes)


def blocks_that_fit(budget_bytes: int, cost: BlockCost, total_blocks: int) -> int:
    """How many blocks (at most ``total_blocks``) fit ``budget_bytes``; a one-line ValueError if not even one does."""
    if total_blocks < 1:
        raise ValueError(f"the model must have at least one block, got {total_blocks}")
    fit = (budget_bytes - cost.fixed_bytes) // cost.per_block if budget_bytes > cost.fixed_bytes else 0
    if fit < 1:
        need = (cost.fixed_bytes + cost.per_block) / GIB
        raise ValueError(
            f"memory budget of {budget_bytes / GIB:.2f} GiB holds no block: one block with its attention cache and "
            f"working memory needs {need:.2f} GiB; raise --memory-budget or lower --cache-tokens, "
            "--max-request-tokens or --training-cache-mb"
        )
    return int(min(fit, total_blocks))


def memory_budget_bytes(device: str, budget_gib: float | None) -> int:
    """Bytes this server may use for blocks and caches on ``device``."""
    limit = None if budget_gib is None else int(budget_gib * GIB)
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        free = max(0, free - GPU_HEADROOM_BYTES)
        return free if limit is None else min(free, limit)
    if limit is not None:
        return limit
    return int(psutil.virtual_memory().available * DEFAULT_RAM_FRACTION)


def choose_num_blocks(
    config: PretrainedConfig,
    dtype: torch.dtype,
    device: str,
    budget_gib: float | None,
    cache_tokens: int,
    max_request_tokens: int,
    training_cache_bytes: int = 0,
    movable: bool = False,
    quantization: str = "none",
) -> int:
    """The span length a server without ``--num-blocks`` serves: as many blocks as its memory budget holds."""
    cost = block_cost(config, dtype, cache_tokens, max_request_tokens, training_cache_bytes, movable, quantization)
    return blocks_that_fit(memory_budget_bytes(device, budget_gib), cost, config.num_hidden_layers)
