"""``engine.models.span``: a span of decoder layers and its attention cache, against transformers' own model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference import assert_close, layer_outputs, load_reference, make_lively_checkpoint

from engine.hf.masks import attention_mask
from engine.models import UnsupportedModelError, get_family, supported_model_types
from engine.models.span import SpanCache, load_span
from engine.weights import resolve_model

FAMILIES = supported_model_types()
IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 7, 100, 12, 33, 1, 90]])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("span-checkpoints")
    return {family: make_lively_checkpoint(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def references(checkpoints: dict[str, Path]) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
    """Per family: (embeddings, each layer's output) of ``IDS`` from transformers."""
    return {family: layer_outputs(load_reference(path), IDS) for family, path in checkpoints.items()}


def test_registry_knows_the_families() -> None:
    assert {"llama", "mistral", "qwen2", "qwen3", "mixtral", "falcon", "bloom", "gemma3_text"} <= set(FAMILIES)


def test_unsupported_model_type_is_named_with_the_supported_ones() -> None:
    from transformers import AutoConfig

    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=8, n_head=2)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported; supported: .*llama"):
        get_family(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_span_matches_transformers_layers(family: str, checkpoints, references) -> None:
    span = load_span(resolve_model(checkpoints[family]), 0, 4, torch.float32)
    embeddings, outputs = references[family]
    with torch.inference_mode():
        assert_close(span(embeddings), outputs[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_partial_span_continues_from_the_previous_block(family: str, checkpoints, references) -> None:
    span = load_span(resolve_model(checkpoints[family]), 1, 3, torch.float32)
    assert (span.start, span.end) == (1, 3)
    _, outputs = references[family]
    with torch.inference_mode():
        assert_close(span(outputs[0]), outputs[2])
        assert_close(span(outputs[0], start=1, end=2), outputs[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_multi_token_steps_after_a_prefix_match_one_pass(family: str, checkpoints, references) -> None:
    span = load_span(resolve_model(checkpoints[family]), 0, 4, torch.float32)
    embeddings, outputs = references[family]
    cache = span.new_cache(0, 4, batch_size=1, max_length=16)
    pieces, position = [], 0
    with torch.inference_mode():
        for size in (5, 3, 1, 1, 2):  # a prompt, then multi-token and single-token steps at position > 0
            pieces.append(span(embeddings[:, position : position + size], position, cache))
            position += size
            assert cache.length == position
    assert_close(torch.cat(pieces, dim=1), outputs[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_step_at_an_earlier_position_rolls_the_cache_back(family: str, checkpoints) -> None:
    model = load_reference(checkpoints[family])
    span = load_span(resolve_model(checkpoints[family]), 0, 4, torch.float32)
    replaced = IDS.clone()
    replaced[0, 5:9] = torch.tensor([11, 22, 33, 44])
    embeddings, expected = layer_outputs(model, replaced[:, :9])
    cache = span.new_cache(0, 4, batch_size=1, max_length=16)
    with torch.inference_mode():
        span(layer_outputs(model, IDS[:, :10])[0], 0, cache)  # the original 10 tokens
        assert cache.length == 10
        redone = span(embeddings[:, 5:8], 5, cache)  # replay from position 5 with other tokens
        assert cache.length == 8
        last = span(embeddings[:, 8:9], 8, cache)
    assert_close(torch.cat([redone, last], dim=1), expected[-1][:, 5:9])


@pytest.mark.parametrize(
    "variant",
    [
        dict(alibi=True, multi_query=False, parallel_attn=False),  # Falcon-RW: ALiBi positions in the mask
        dict(new_decoder_architecture=True, num_kv_heads=2),  # Falcon-40B/180B: grouped keys, two layer norms
    ],
    ids=["falcon-rw-alibi", "falcon-new-architecture"],
)
def test_falcon_variants_match_transformers(variant: dict, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "falcon", vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, bias=True, **variant
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path)
    model = load_reference(tmp_path)
    span = load_span(resolve_model(tmp_path), 0, 2, torch.float32)
    embeddings, outputs = layer_outputs(model, IDS)
    cache = span.new_cache(0, 2, batch_size=1, max_length=12)
    with torch.inference_mode():
        assert_close(span(embeddings), outputs[-1])
        steps = [span(embeddings[:, start:end], start, cache) for start, end in ((0, 6), (6, 9), (9, 10), (10, 12))]
    assert_close(torch.cat(steps, dim=1), outputs[-1])


def test_cache_of_part_of_the_span(checkpoints, references) -> None:
    span = load_span(resolve_model(checkpoints["llama"]), 0, 4, torch.float32)
    _, outputs = references["llama"]
    cache = span.new_cache(1, 3, batch_size=1, max_length=12)
    assert cache.keys.shape[0] == 2
    with torch.inference_mode():
        first = span(outputs[0][:, :7], 0, cache, start=1, end=3)
        rest = span(outputs[0][:, 7:], 7, cache, start=1, end=3)
    assert_close(torch.cat([first, rest], dim=1), outputs[2])


def test_batched_rows_match_separate_runs(checkpoints) -> None:
    model = load_reference(checkpoints["qwen2"])
    span = load_span(resolve_model(checkpoints["qwen2"]), 0, 4, torch.float32)
    batch = torch.cat([IDS, IDS.flip(1)])
    cache = span.new_cache(0, 4, batch_size=2, max_length=12)
    with torch.inference_mode():
        hidden = model.model.embed_tokens(batch)
        output = torch.cat([span(hidden[:, :6], 0, cache), span(hidden[:, 6:], 6, cache)], dim=1)
    for row in range(2):
        assert_close(output[row : row + 1], layer_outputs(model, batch[row : row + 1])[1][-1])


def test_sliding_window_matches_transformers(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "mistral",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path)
    model = load_reference(tmp_path)
    span = load_span(resolve_model(tmp_path), 0, 2, torch.float32)
    assert span.windows == [4, 4]
    embeddings, outputs = layer_outputs(model, IDS)
    cache = span.new_cache(0, 2, batch_size=1, max_length=12)
    with torch.inference_mode():
        assert_close(span(embeddings), outputs[-1])
        steps = [span(embeddings[:, start:end], start, cache) for start, end in ((0, 6), (6, 9), (9, 12))]
    assert_close(torch.cat(steps, dim=1), outputs[-1])


def test_attention_mask_is_left_to_sdpa_where_it_is_exact() -> None:
    device = torch.device("cpu")
    assert attention_mask(0, 5, None, device) is None  # a first step: plain causal
    assert attention_mask(7, 1, None, device) is None  # one new token sees the whole prefix
    mask = attention_mask(2, 2, None, device)
    assert mask.tolist() == [[[[True, True, True, False], [True, True, True, True]]]]
    windowed = attention_mask(3, 1, 2, device)
    assert windowed.tolist() == [[[[False, False, True, True]]]]


def test_load_span_rejects_blocks_outside_the_model(checkpoints) -> None:
    source = resolve_model(checkpoints["llama"])
    for start, end in ((0, 99), (3, 3), (-1, 2)):
        with pytest.raises(ValueError, match=f"block range {start}:{end} is outside the model's blocks 0:4"):
            load_span(source, start, end, torch.float32)


def test_cache_size_is_fixed_by_blocks_heads_and_length(checkpoints) -> None:
    span = load_span(resolve_model(checkpoints["qwen3"]), 0, 2, torch.float32)
    heads, head_dim = span.family.kv_shape(span.config)
    assert (heads, head_dim) == (2, 16)
    assert SpanCache.bytes_per_token(2, (heads, head_dim), torch.float32) == 2 * 2 * heads * head_dim * 4
    cache = span.new_cache(0, 2, batch_size=3, max_length=10)
    assert cache.keys.shape == (2, 3, heads, 10, head_dim) and cache.values.shape == cache.keys.shape
    assert cache.length == 0
