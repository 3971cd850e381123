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


def test_block_cost_counts_cache_per_block_and_one_reserve(tiny_checkpoints: Callable[[str], Path]) -> None:
    config = resolve_model(tiny_checkpoints("llama")).config  # hidden 64, kv 2 heads x 16, intermediate 128
    cost = block_cost(config, torch.float32, cache_tokens=1000, max_request_tokens=100)
    assert cost.cache_bytes == 1000 * SpanCache.bytes_per_token(1, (2, 16), torch.float32) == 1000 * 2 * 2 * 16 * 4
    assert cost.reserve_bytes == 100 * (2 * 64 + 3 * 128) * 4
    assert cost.per_block == cost.weight_bytes + cost.cache_bytes


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
    """smollm2-135m in float32: ~14 MB of weights and, at the default 16384 cache tokens, ~25 MB of cache a block."""
    config = resolve_model("smollm2-135m").config
    assert choose_num_blocks(config, torch.float32, "cpu", 0.5, 16384, 8192) == 8
    assert choose_num_blocks(config, torch.float32, "cpu", 4.0, 16384, 8192) == 30
    # a smaller cache leaves room for more blocks in the same budget
    assert choose_num_blocks(config, torch.float32, "cpu", 0.5, 1024, 8192) > 8
