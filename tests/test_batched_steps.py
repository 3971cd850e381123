"""One-token steps of several sessions run as one batch (``BlockSpan.batched_step``, ``SpanBackend.inference_steps``)
give each session what it gets alone: sessions of different lengths and batch sizes, sliding windows, rolled-back
positions (fast: in process, tiny checkpoints)."""

from __future__ import annotations

import pytest
import torch
from reference import assert_close

from engine.models.span import load_span
from engine.weights import resolve_model

BATCHABLE = [
    "llama",
    "mixtral",
    "gemma3_text",
]  # rotary layers; mixtral routes each row to its experts; gemma3 has windows
PREFIXES = [(1, 3), (2, 7), (1, 1), (3, 12), (1, 5)]  # (session batch size, tokens already cached)


def _sessions(span, prefixes, seed: int = 0):
    """Caches filled by a solo prefill of random hidden states, and each session's next one-token input."""
    generator = torch.Generator().manual_seed(seed)
    hidden_size = span.config.hidden_size
    caches, inputs = [], []
    for batch, tokens in prefixes:
        cache = span.new_cache(span.start, span.end, batch, 24)
        span(torch.randn(batch, tokens, hidden_size, generator=generator), 0, cache)
        caches.append(cache)
        inputs.append(torch.randn(batch, 1, hidden_size, generator=generator))
    return caches, inputs


@pytest.mark.parametrize("family", BATCHABLE)
def test_a_batch_of_steps_equals_each_step_alone(tiny_checkpoints, family: str) -> None:
    span = load_span(resolve_model(tiny_checkpoints(family)), 0, 4, torch.float32)
    assert span.family.batches_steps()
    with torch.inference_mode():
        solo_caches, inputs = _sessions(span, PREFIXES)
        batch_caches, _ = _sessions(span, PREFIXES)
        for _ in range(2):  # the second step reads what the batch before it wrote
            positions = [cache.length for cache in solo_caches]
            alone = [
                span(hidden, position, cache)
                for hidden, position, cache in zip(inputs, positions, solo_caches, strict=True)
            ]
            together = span.batched_step(torch.cat(inputs), positions, batch_caches, 0, 4)
            assert_close(together, torch.cat(alone))
            inputs = [output.clone() for output in alone]
        for solo, batched in zip(solo_caches, batch_caches, strict=True):
            assert batched.length == solo.length
            assert_close(batched.keys[:, :, :, : solo.length], solo.keys[:, :, :, : solo.length])


def test_a_batched_step_may_roll_a_session_back(tiny_checkpoints) -> None:
    span = load_span(resolve_model(tiny_checkpoints("llama")), 1, 3, torch.float32)
    with torch.inference_mode():
        solo_caches, inputs = _sessions(span, PREFIXES[:2])
        batch_caches, _ = _sessions(span, PREFIXES[:2])
        positions = [1, 4]  # both sessions replay from an earlier position
        alone = [
            span(hidden, position, cache, 1, 3)
            for hidden, position, cache in zip(inputs, positions, solo_caches, strict=True)
        ]
        together = span.batched_step(torch.cat(inputs), positions, batch_caches, 1, 3)
    assert_close(together, torch.cat(alone))
    assert [cache.length for cache in batch_caches] == [2, 5]


def test_alibi_families_step_one_by_one(tiny_checkpoints) -> None:
    assert not load_span(resolve_model(tiny_checkpoints("bloom")), 0, 1, torch.float32).family.batches_steps()
