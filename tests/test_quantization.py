"""Quantized blocks (bitsandbytes int8 and nf4, on CPU): loading, sizing, and serving through a real swarm.

Through the swarm, outputs, session steps and gradients equal the same quantized layers run in one process
(LLM.int8 picks its outlier columns over all tokens of a call, so both sides are cut into the same calls).
Servers announce their quantization, and a client that requires more precision avoids the servers below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV
from finetune_reference import make_lora_adapter
from reference import assert_close, make_lively_checkpoint
from swarm_helpers import RawStream, forward, wait_covered

from agent.local_swarm import LocalSwarm
from engine.client.config import ClientSettings
from engine.client.local import LocalCausalLM
from engine.client.model import DistributedCausalLM
from engine.client.ptune import DeepPromptTuning
from engine.client.routing import MissingBlocksError, precise_enough
from engine.models.span import load_span
from engine.quantization import at_least, check_quantization
from engine.records import ServerRecord, ServerState
from engine.server.adapters import AdapterSet
from engine.server.span_size import block_cost, block_weight_bytes, blocks_that_fit
from engine.weights import resolve_model

pytest.importorskip("bitsandbytes")

IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 7, 100], [9, 8, 7, 6, 5, 4, 3, 2]])


def loaded_bytes(span) -> int:
    tensors = [*span.layers.parameters(), *span.layers.buffers()]
    extra = 0
    for parameter in span.layers.parameters():  # quantization statistics live beside the weights
        for name in ("SCB",):
            if getattr(parameter, name, None) is not None:
                extra += getattr(parameter, name).numel() * 4
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            extra += state.absmax.numel() * state.absmax.element_size()
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors) + extra


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_span_replaces_linears_and_is_sized_in_advance(tiny_checkpoints, quantization: str) -> None:
    import bitsandbytes as bnb

    source = resolve_model(tiny_checkpoints("llama"))
    span = load_span(source, 0, 2, torch.float32, quantization=quantization)
    kind = bnb.nn.Linear8bitLt if quantization == "int8" else bnb.nn.Linear4bit
    attention = span.layers[0].self_attn
    assert isinstance(attention.q_proj, kind) and isinstance(span.layers[1].mlp.down_proj, kind)
    assert span.layers[0].input_layernorm.weight.dtype == torch.float32 and span.dtype == torch.float32
    predicted = 2 * block_weight_bytes(source.config, torch.float32, quantization)
    assert abs(loaded_bytes(span) - predicted) / predicted < 0.1
    full = 2 * block_weight_bytes(source.config, torch.float32)
    assert predicted < (0.3 if quantization == "int8" else 0.2) * full  # tiny blocks: the linears are nearly all
    budget = 64 * full  # the same memory holds several times more quantized blocks
    fit = [
        blocks_that_fit(budget, block_cost(source.config, torch.float32, 0, 1, quantization=q), 10**6)
        for q in ("none", quantization)
    ]
    assert fit[1] > 3 * fit[0]
    reference = load_span(source, 0, 2, torch.float32)
    hidden = torch.randn(2, 6, source.config.hidden_size)
    with torch.inference_mode():
        error = (span(hidden) - reference(hidden)).norm() / reference(hidden).norm()
    assert error < (0.02 if quantization == "int8" else 0.1)


def test_precision_order_and_bad_names() -> None:
    assert at_least("none", "int8") and at_least("int8", "int8") and at_least("nf4", "nf4")
    assert not at_least("nf4", "int8") and not at_least("int8", "none") and not at_least("fp3", "nf4")
    with pytest.raises(ValueError, match="--quant must be one of none, int8, nf4, got 'int4'"):
        check_quantization("int4")
    with pytest.raises(ValueError, match="min precision must be one of"):
        ClientSettings(min_precision="fp8")
    records = {
        0: [
            ServerRecord("a", 0, 1, ServerState.ONLINE, quantization="nf4"),
            ServerRecord("b", 0, 1, ServerState.ONLINE, quantization="none"),
        ]
    }
    assert [record.peer_id for record in precise_enough(records, "int8")[0]] == ["b"]


# ---- through a swarm ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_checkpoint(tmp_path_factory.mktemp("quantized") / "llama", "llama")


@pytest.fixture(scope="module")
def adapter(checkpoint: Path) -> Path:
    return make_lora_adapter(checkpoint, checkpoint.parent / "quant-lora")


@pytest.fixture(scope="module")
def swarm(checkpoint: Path, adapter: Path) -> Iterator[LocalSwarm]:
    """int8 servers for 0:2 and 2:4 (with a LoRA adapter), and one nf4 server for 0:4."""
    local = LocalSwarm(str(checkpoint), [(0, 2), (2, 4)], ["--quant", "int8", "--adapters", str(adapter)], env=TEST_ENV)
    try:
        local.start()
        local.add_server((0, 4), ["--quant", "nf4", "--adapters"])
        yield local
    finally:
        local.stop()


def connect(swarm: LocalSwarm, checkpoint: Path, minimum: str) -> DistributedCausalLM:
    client = DistributedCausalLM.connect(
        str(checkpoint), swarm.initial_peers, settings=ClientSettings(min_precision=minimum)
    )
    wait_covered(client.swarm, client.num_blocks)
    return client


@pytest.mark.slow
def test_swarm_outputs_and_gradients_equal_the_same_quantized_layers_in_one_process(swarm, checkpoint) -> None:
    source = resolve_model(checkpoint)
    local = LocalCausalLM(source, quantization="int8")
    int8_servers = [server.ready for server in swarm.servers[:2]]
    client = connect(swarm, checkpoint, "int8")  # only the int8 servers are precise enough
    try:
        infos = client.swarm.run(client.swarm.read_blocks(0, 4), 60)
        assert {record.quantization for records in infos.values() for record in records} == {"int8", "nf4"}
        embeddings = client.embed(IDS)
        with torch.no_grad():
            expected_first = local.blocks.span(embeddings, 0, None, 0, 2)
            expected = local.blocks.span(expected_first, 0, None, 2, 4)
            assert_close(forward(client.swarm, int8_servers[0]["peer_id"], embeddings, 0, 2), expected_first)
            assert_close(client.blocks(embeddings), expected)
            # session steps: the same calls (5 tokens, then 3) on both sides
            cache = local.blocks.span.new_cache(0, 4, 2, 8)
            want = [local.blocks.span(embeddings[:, :5], 0, cache), local.blocks.span(embeddings[:, 5:], 5, cache)]
            with client.inference_session(max_length=8, batch_size=2) as session:
                got = [session.step(embeddings[:, :5]), session.step(embeddings[:, 5:])]
                assert [(hop.start, hop.end) for hop in session.route] == [(0, 2), (2, 4)]
            assert_close(torch.cat(got, 1), torch.cat(want, 1))
        # fine-tuning: deep prompt tuning gradients through int8 blocks equal the local quantized model's
        grads = []
        for model in (client, local):
            tuning = DeepPromptTuning(model, prefix_length=2, seed=3)
            with torch.no_grad():
                tuning.deep.normal_(generator=torch.Generator().manual_seed(0))
            tuning.loss(IDS, IDS).backward()
            grads.append((tuning.prefix.grad, tuning.deep.grad))
        assert grads[0][0].abs().sum() > 0
        assert_close(grads[0][0], grads[1][0], rtol=1e-3)
        assert_close(grads[0][1], grads[1][1], rtol=1e-3)
    finally:
        client.close()


@pytest.mark.slow
def test_lora_adapter_on_quantized_blocks_equals_one_process(swarm, checkpoint, adapter) -> None:
    source = resolve_model(checkpoint)
    span = load_span(source, 0, 2, torch.float32, quantization="int8")
    adapters = AdapterSet(span)
    name = adapters.load(adapter)
    server = swarm.servers[0].ready
    client = connect(swarm, checkpoint, "int8")
    try:
        hidden = client.embed(IDS)
        with torch.no_grad(), adapters.use(name):
            expected = span(hidden)
        with torch.no_grad():
            plain = span(hidden)
        with RawStream(client.swarm, server["peer_id"]) as stream:
            stream.open(start=0, end=2, max_length=8, batch_size=2, adapter=name)
            got = stream.step(hidden, 0)
        assert_close(got, expected)
        assert (expected - plain).abs().max() > 1e-3  # the adapter changes the quantized blocks' outputs
    finally:
        client.close()


@pytest.mark.slow
def test_client_requiring_full_precision_is_told_no_server_qualifies(swarm, checkpoint) -> None:
    client = connect(swarm, checkpoint, "none")
    try:
        with pytest.raises(MissingBlocksError, match="at least as precise as none"):
            client.blocks(client.embed(IDS))
    finally:
        client.close()
    client = connect(swarm, checkpoint, "nf4")  # any server will do: the whole span on the nf4 server is allowed
    try:
        with torch.no_grad():
            assert client.blocks(client.embed(IDS)).shape == (2, 8, client.config.hidden_size)
    finally:
        client.close()
