"""A server of a few blocks reads only those blocks' tensors; a client reads only embeddings, norm and head."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_checkpoint

from engine.models.span import load_span
from engine.weights import ModelSource, resolve_model


@pytest.fixture
def read_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every tensor name that ``ModelSource.read`` is asked for, in order (the real read still runs)."""
    names: list[str] = []
    original = ModelSource.read

    def recording_read(self: ModelSource, wanted: Iterable[str], dtype: torch.dtype | None = None):
        wanted = list(wanted)
        names.extend(wanted)
        return original(self, wanted, dtype)

    monkeypatch.setattr(ModelSource, "read", recording_read)
    return names


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("partial") / "llama", "llama", num_layers=6)


def test_span_of_blocks_0_2_reads_only_their_tensors(checkpoint: Path, read_log: list[str]) -> None:
    source = resolve_model(checkpoint)
    span = load_span(source, 0, 2, torch.float32)
    expected = {name for name in source.weight_map if name.startswith(("model.layers.0.", "model.layers.1."))}
    assert set(read_log) == expected
    assert len(read_log) == len(expected)  # each tensor read once
    assert sum(parameter.numel() for parameter in span.parameters()) == sum(
        source.read([name])[name].numel() for name in expected
    )


def test_middle_span_reads_nothing_outside_it(checkpoint: Path, read_log: list[str]) -> None:
    source = resolve_model(checkpoint)
    load_span(source, 3, 5, torch.float32)
    assert read_log and all(name.startswith(("model.layers.3.", "model.layers.4.")) for name in read_log)
    assert not any(name.startswith(("model.embed_tokens", "model.norm", "lm_head")) for name in read_log)


def test_loaded_parameters_are_the_checkpoint_tensors(checkpoint: Path) -> None:
    source = resolve_model(checkpoint)
    span = load_span(source, 2, 4, torch.float32)
    state = span.layers[1].state_dict()
    stored = source.read_prefix("model.layers.3.")
    assert state.keys() == stored.keys()
    for name, tensor in stored.items():
        assert torch.equal(state[name], tensor), name


def test_read_to_a_narrower_dtype(checkpoint: Path) -> None:
    span = load_span(resolve_model(checkpoint), 0, 1, torch.bfloat16)
    assert span.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.bfloat16 for parameter in span.parameters())


def test_client_side_reads_only_embeddings_norm_and_head(checkpoint: Path, read_log: list[str]) -> None:
    """``DistributedCausalLM``'s local parts (``CausalLMParts``, built before it uses the swarm) read nothing else."""
    from engine.client.model import CausalLMParts

    model = CausalLMParts(resolve_model(checkpoint))
    assert set(read_log) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert model.num_blocks == 6
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_client_head_matches_transformers(checkpoint: Path) -> None:
    from reference import layer_outputs, load_reference

    from engine.client.model import CausalLMParts

    reference = load_reference(checkpoint)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    embeddings, outputs = layer_outputs(reference, ids)
    model = CausalLMParts(resolve_model(checkpoint))
    with torch.no_grad():
        torch.testing.assert_close(model.embed(ids), embeddings)
        torch.testing.assert_close(model.logits(outputs[-1]), reference(ids).logits)
