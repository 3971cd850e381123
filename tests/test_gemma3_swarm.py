"""Gemma 3 270M, shipped by Python packages as a GGUF file in parts: assembled once, converted once, and served by
a real 2-server swarm whose greedy generation equals transformers' own on held prompts.

Skipped where the packages are not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import TEST_ENV
from reference import assert_close, greedy_reference, layer_outputs, load_reference
from swarm_helpers import wait_covered

from agent.local_swarm import LocalSwarm
from engine.client.generation import GenerationSettings, chat_prompt, generate
from engine.client.model import DistributedCausalLM
from engine.weights import ModelNotFoundError, resolve_model

pytestmark = pytest.mark.slow

ALIAS = "gemma3-270m"
PROMPTS = ("Write one sentence about bees.", "What is the capital of France?")


@pytest.fixture(scope="module")
def gemma() -> Iterator[tuple[DistributedCausalLM, object, object]]:
    try:
        source = resolve_model(ALIAS)  # assembled and converted (once) before the servers start
    except ModelNotFoundError as error:
        pytest.skip(str(error))
    with LocalSwarm(ALIAS, [(0, 9), (9, 18)], env=TEST_ENV) as swarm:
        client = DistributedCausalLM.connect(ALIAS, swarm.initial_peers)
        try:
            wait_covered(client.swarm, client.num_blocks)
            yield client, source.tokenizer(), load_reference(source.path)
        finally:
            client.close()


def test_gemma3_alias_is_assembled_and_converted_once() -> None:
    try:
        source = resolve_model(ALIAS)
    except ModelNotFoundError as error:
        pytest.skip(str(error))
    config = source.config
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18
    assert {"sliding_attention", "full_attention"} == set(config.layer_types)
    assert resolve_model(ALIAS).path == source.path


@pytest.mark.parametrize("question", PROMPTS)
def test_gemma3_greedy_generation_through_the_swarm_equals_transformers(gemma, question: str) -> None:
    client, tokenizer, reference = gemma
    prompt = chat_prompt(tokenizer, question)
    result = generate(client, prompt, GenerationSettings(max_new_tokens=20), tokenizer)
    expected = greedy_reference(reference, prompt, 20, eos=True)
    assert result.tokens == expected
    assert result.text.strip() and len(result.tokens) >= 5
    assert [hop.split("@")[0] for hop in result.route] == ["0:9", "9:18"]


def test_gemma3_hidden_states_match_beyond_the_sliding_window(gemma) -> None:
    """A prompt longer than the 512-token window: the sliding layers must mask the far past, the global ones not."""
    client, tokenizer, reference = gemma
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog. " * 60)["input_ids"][:600]])
    assert ids.shape[1] > reference.config.sliding_window
    embeddings, outputs = layer_outputs(reference, ids)
    with torch.no_grad(), client.inference_session(max_length=ids.shape[1]) as session:
        steps = [session.step(embeddings[:, :580]), session.step(embeddings[:, 580:597])]
        steps += [session.step(embeddings[:, index : index + 1]) for index in range(597, 600)]
    assert_close(torch.cat(steps, dim=1), outputs[-1], rtol=1e-3)
