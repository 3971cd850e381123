"""Generation through real local swarms equals transformers' own, token for token and hidden state by hidden state.

Each swarm is a DHT node and two ``nectar serve`` processes on 127.0.0.1; nothing of the transport is mocked.
One DHT node carries the tiny checkpoints of every supported family (each under its own prefix), and a second
swarm serves the embedded SmolLM2-135M-Instruct in two halves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV
from reference import assert_close, greedy_reference, layer_outputs, load_reference, make_lively_checkpoint
from swarm_helpers import RawStream, forward, wait_covered, wait_ready

from agent.local_swarm import LocalSwarm
from engine.client.generation import GenerationSettings, chat_prompt, generate
from engine.client.model import DistributedCausalLM
from engine.models import supported_model_types
from engine.weights import resolve_model

pytestmark = pytest.mark.slow

FAMILIES = supported_model_types()
# two servers per model, cut at different blocks so that every split point of a 4-block model is crossed
SPANS = {"llama": [(0, 2), (2, 4)], "mistral": [(0, 1), (1, 4)], "qwen2": [(0, 3), (3, 4)], "qwen3": [(0, 2), (2, 4)]}
DEFAULT_SPANS = [(0, 2), (2, 4)]
PROMPTS = ([5, 17, 42, 99, 3, 64, 7, 100], [9])
SMOLLM_PROMPT = "Write three sentences about the sea."


class Served:
    """A model served by a swarm, a client connected to it, and transformers' reference for it."""

    def __init__(self, path: Path, swarm: LocalSwarm):
        self.path, self.swarm = path, swarm
        self.client: DistributedCausalLM | None = None
        self.reference = load_reference(path)

    def connect(self) -> DistributedCausalLM:
        self.client = DistributedCausalLM.connect(str(self.path), self.swarm.initial_peers)
        wait_covered(self.client.swarm, self.client.num_blocks)
        return self.client

    def server(self, index: int) -> tuple[str, int, int]:
        ready = self.swarm.servers[index].ready
        return ready["peer_id"], *ready["blocks"]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    """Every supported family's tiny checkpoint served by two servers, all on one DHT node."""
    root = tmp_path_factory.mktemp("swarm-checkpoints")
    paths = {family: make_lively_checkpoint(root / family, family) for family in FAMILIES}
    base = LocalSwarm(str(paths[FAMILIES[0]]), [], env=TEST_ENV)  # the DHT node only; servers follow
    swarms: list[LocalSwarm] = []
    served: dict[str, Served] = {}
    try:
        base.start()
        for family in FAMILIES:
            swarm = base if family == FAMILIES[0] else LocalSwarm(str(paths[family]), [], env=TEST_ENV)
            swarm.dht = base.dht  # one DHT, each model under its own prefix (the checkpoint's directory name)
            swarms.append(swarm)
            for span in SPANS.get(family, DEFAULT_SPANS):
                swarm.add_server(span, wait=False)
        wait_ready([child for swarm in swarms for child in swarm.servers])
        for family in FAMILIES:
            served[family] = Served(paths[family], swarms[FAMILIES.index(family)])
            served[family].connect()
        yield served
    finally:
        for item in served.values():
            if item.client is not None:
                item.client.close()
        for swarm in swarms:
            if swarm is not base:
                swarm.dht = None  # the shared DHT node stops last, with the base swarm
                swarm.stop()
        base.stop()


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers(family: str, families: dict[str, Served]) -> None:
    served = families[family]
    for prompt in PROMPTS:
        result = generate(served.client, prompt, GenerationSettings(max_new_tokens=24), stop_token_ids=set())
        assert result.stop_reason == "length"
        assert result.tokens == greedy_reference(served.reference, list(prompt), 24), f"prompt {prompt}"
        assert len(set(result.tokens)) > 3, "a degenerate sequence would prove little"
    expected_route = [f"{start}:{end}" for start, end in SPANS.get(family, DEFAULT_SPANS)]
    assert [hop.split("@")[0] for hop in result.route] == expected_route


@pytest.mark.parametrize("family", FAMILIES)
def test_remote_blocks_forward_matches_local_layers(family: str, families: dict[str, Served]) -> None:
    served = families[family]
    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])  # a batch of two sequences
    embeddings, outputs = layer_outputs(served.reference, ids)
    with torch.no_grad():
        assert_close(served.client.blocks(embeddings), outputs[-1])
    peer_id, start, end = served.server(0)
    assert start == 0
    assert_close(forward(served.client.swarm, peer_id, embeddings, start, end), outputs[end - 1])
    peer_id, start, end = served.server(1)
    assert_close(forward(served.client.swarm, peer_id, outputs[start - 1], start, end), outputs[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_session_steps_after_a_prefix_match_one_pass(family: str, families: dict[str, Served]) -> None:
    served = families[family]
    ids = torch.tensor([[*PROMPTS[0], 1, 2, 3, 4]])
    embeddings, outputs = layer_outputs(served.reference, ids)
    pieces = []
    with torch.no_grad(), served.client.inference_session(max_length=16) as session:
        for size in (5, 3, 1, 2, 1):  # the prompt, then multi-token and one-token steps at positions > 0
            pieces.append(session.step(embeddings[:, session.position : session.position + size]))
        assert session.position == 12
        assert [(hop.start, hop.end) for hop in session.route] == SPANS.get(family, DEFAULT_SPANS)
    assert_close(torch.cat(pieces, dim=1), outputs[-1])


def test_server_rolls_back_to_an_earlier_position(families: dict[str, Served]) -> None:
    """A step at a position before the cache's end replaces what followed (how a replay rebuilds a cache)."""
    served = families["llama"]
    peer_id, start, end = served.server(0)
    ids = torch.tensor([PROMPTS[0]])
    replaced = ids.clone()
    replaced[0, 4:] = torch.tensor([50, 60, 70, 80])
    embeddings, _ = layer_outputs(served.reference, ids)
    new_embeddings, expected = layer_outputs(served.reference, replaced)
    with RawStream(served.client.swarm, peer_id) as stream:
        assert stream.open(start=start, end=end, max_length=8)["max_length"] == 8
        stream.step(embeddings, 0)
        redone = stream.step(new_embeddings[:, 4:7], 4)
        last = stream.step(new_embeddings[:, 7:], 7)
    assert_close(torch.cat([redone, last], dim=1), expected[end - 1][:, 4:])


@pytest.fixture(scope="module")
def smollm() -> Iterator[Served]:
    """The embedded model, blocks 0:15 and 15:30 on two servers."""
    source = resolve_model("smollm2-135m")  # converted (once) before the servers start
    with LocalSwarm("smollm2-135m", [(0, 15), (15, 30)], env=TEST_ENV) as swarm:
        served = Served(source.path, swarm)
        served.client = DistributedCausalLM.connect("smollm2-135m", swarm.initial_peers)
        try:
            wait_covered(served.client.swarm, served.client.num_blocks)
            yield served
        finally:
            served.client.close()


def test_smollm2_chat_greedy_matches_transformers(smollm: Served) -> None:
    tokenizer = resolve_model("smollm2-135m").tokenizer()
    prompt = chat_prompt(tokenizer, SMOLLM_PROMPT)
    result = generate(smollm.client, prompt, GenerationSettings(max_new_tokens=28), tokenizer)
    expected = greedy_reference(smollm.reference, prompt, 28, eos=True)
    assert result.tokens == expected
    assert len(result.tokens) >= 20, "the answer should be long enough to compare"
    assert result.text == tokenizer.decode(expected, skip_special_tokens=True) and result.text.strip()
    assert [hop.split("@")[0] for hop in result.route] == ["0:15", "15:30"]


def test_smollm2_hidden_states_match_local_layers(smollm: Served) -> None:
    tokenizer = resolve_model("smollm2-135m").tokenizer()
    ids = torch.tensor([chat_prompt(tokenizer, SMOLLM_PROMPT)])
    embeddings, outputs = layer_outputs(smollm.reference, ids)
    with torch.no_grad():
        assert_close(smollm.client.blocks(embeddings), outputs[-1])
        tokens = ids.shape[1]
        with smollm.client.inference_session(max_length=tokens) as session:
            steps = [session.step(embeddings[:, : tokens - 4]), session.step(embeddings[:, tokens - 4 : tokens - 1])]
            steps.append(session.step(embeddings[:, tokens - 1 :]))
    assert_close(torch.cat(steps, dim=1), outputs[-1])
