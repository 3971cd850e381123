"""Memory budget -> number of blocks: the per-block cost model and the budget on CPU and GPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine.models.span import SpanCache, load_span
from engine.server import span_size
from engine.server.span_size import GIB, BlockCost, block_cost, block_weight_bytes, blocks_that_fit, choose_num_blocks
from engine.weights import resolve_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_weight_bytes_match_a_loaded_block(tiny_checkpoints: Callable[[str], Path], dtype: torch.dtype) -> None:
    source = resolve_model(tiny_checkpoints("llama"))
    span = load_span(source, 1, 2, dtype)
    loaded = sum(tensor.numel() * tensor.element_size() for tensor in [*span.layers.parameters()])
    assert block_weight_bytes(source.config, dtype) == loaded


def test_block_cost_counts_every_memory_item(tiny_checkpoints: Callable[[str], Path]) -> None:
    config = resolve_model(tiny_checkpoints("llama")).config  # hidden 64, kv 2 heads x 16, intermediate 128
    cost = block_cost(config, torch.float32, cache_tokens=1000, max_request_tokens=100)
    assert cost.cache_bytes == 1000 * SpanCache.bytes_per_token(1, (2, 16), torch.float32) == 1000 * 2 * 2 * 16 * 4
    assert cost.reserve_bytes == 100 * (8 * 64 + 4 * 128) * 4  # one block's activations with their graph
    assert cost.backward_bytes == 100 * 64 * 4  # each block's input, kept by a recomputing backward
    assert cost.move_bytes == 0 and cost.training_bytes == 0
    assert cost.per_block == cost.weight_bytes + cost.cache_bytes + cost.backward_bytes
    assert cost.fixed_bytes == cost.reserve_bytes
    moving = block_cost(config, torch.float32, 1000, 100, training_cache_bytes=2**20, movable=True)
    assert moving.move_bytes == moving.weight_bytes  # a move holds the old and the new span's weights at once
    assert moving.per_block == cost.per_block + cost.weight_bytes
    assert moving.fixed_bytes == cost.reserve_bytes + 2**20  # the training activation store, once


def test_a_recomputing_backward_holds_what_the_cost_model_says(tiny_checkpoints: Callable[[str], Path]) -> None:
    """The peak memory of a backward (measured with autograd's saved-tensor hooks) stays within the model."""
    from engine.server.activations import SavedBytes

    source = resolve_model(tiny_checkpoints("llama"))
    span = load_span(source, 0, 4, torch.float32)
    cost = block_cost(source.config, torch.float32, cache_tokens=1, max_request_tokens=40)
    hidden = torch.randn(2, 20, 64, requires_grad=True)
    counter = SavedBytes(span.parameters())
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        span(hidden, 0, None, 0, 1)  # one block's graph, as the block-by-block backward builds it
    assert counter.total <= cost.reserve_bytes


def test_blocks_that_fit() -> None:
    cost = BlockCost(weight_bytes=100, cache_bytes=50, reserve_bytes=1000)
    assert blocks_that_fit(1000 + 150 * 7 + 149, cost, total_blocks=30) == 7  # rounds down
    assert blocks_that_fit(10**9, cost, total_blocks=30) == 30  # never more than the model has
    assert blocks_that_fit(1150, cost, total_blocks=30) == 1
    with pytest.raises(ValueError, match="holds no block") as info:
        blocks_that_fit(1149, cost, total_blocks=30)
    assert "--memory-budget" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="holds no block"):
        blocks_that_fit(500, cost, total_blocks=30)  # less than the reserve alone


def test_cpu_budget_is_the_setting_or_a_share_of_available_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    assert span_size.memory_budget_bytes("cpu", 1.5) == int(1.5 * GIB)
    monkeypatch.setattr(span_size.psutil, "virtual_memory", lambda: SimpleNamespace(available=8 * GIB))
    assert span_size.memory_budget_bytes("cpu", None) == int(8 * GIB * span_size.DEFAULT_RAM_FRACTION)


def test_gpu_budget_is_free_memory_capped_by_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        seen.append(device)
        return 10 * GIB, 80 * GIB

    monkeypatch.setattr(span_size.torch.cuda, "mem_get_info", mem_get_info)
    free = 10 * GIB - span_size.GPU_HEADROOM_BYTES
    assert span_size.memory_budget_bytes("cuda:1", None) == free
    assert span_size.memory_budget_bytes("cuda:1", 4.0) == 4 * GIB
    assert span_size.memory_budget_bytes("cuda:1", 40.0) == free
    assert seen[0] == torch.device("cuda:1")


def test_embedded_model_sizes() -> None:
    """smollm2-135m in float32: ~14 MB of weights and, at the default 16384 cache tokens, ~25 MB of cache a block;
    a request of 8192 tokens needs ~350 MB through one block with its graph and ~19 MB of input per block."""
    config = resolve_model("smollm2-135m").config
    assert choose_num_blocks(config, torch.float32, "cpu", 1.0, 16384, 8192) == 12
    assert choose_num_blocks(config, torch.float32, "cpu", 4.0, 16384, 8192) == 30
    # a smaller cache leaves room for more blocks in the same budget
    assert choose_num_blocks(config, torch.float32, "cpu", 1.0, 1024, 8192) > 12
    # a server that may move holds a second copy of its weights; the training store comes off the top
    assert choose_num_blocks(config, torch.float32, "cpu", 1.0, 16384, 8192, 2**28, movable=True) < 12
