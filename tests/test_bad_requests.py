"""Bad requests get a clear one-line error, and the server goes on serving everyone else.

A real swarm (a DHT node and two ``nectar serve`` processes on 127.0.0.1) receives raw messages through a real
client connection. After every bad request the same server must answer a good one correctly and its log must
hold no traceback. Errors in what the user types (a missing model, blocks outside the model) are in
``test_cli.py`` and ``test_weights.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import torch
from conftest import TEST_ENV
from hivemind.proto import runtime_pb2
from swarm_helpers import RawStream, call, forward, wait_covered

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.model import DistributedCausalLM
from engine.models.span import load_span
from engine.weights import ModelNotFoundError, resolve_model
from engine.wire import RemoteError

pytestmark = pytest.mark.slow

HIDDEN = 64
SMALL_CACHE = 48  # tokens of attention cache on the second server
LIMITS = ["--max-session-length", "32", "--max-request-tokens", "64"]


class Swarm:
    """The running swarm, a client connected to it, and a local span that says what a correct answer is."""

    def __init__(self, path: Path, swarm: LocalSwarm, client: DistributedCausalLM):
        self.path, self.local, self.client = path, swarm, client
        self.span = load_span(resolve_model(path), 0, 4, torch.float32)

    def peer(self, index: int) -> str:
        return self.local.servers[index].ready["peer_id"]

    def info(self, index: int) -> dict:
        return call(self.client.swarm, self.peer(index), wire.INFO_PROTOCOL, wire.request())[1]


@pytest.fixture(scope="module")
def swarm(tiny_checkpoints) -> Iterator[Swarm]:
    """Server 0 holds blocks 0:2; server 1 holds 2:4 with a cache budget of only ``SMALL_CACHE`` tokens."""
    path = tiny_checkpoints("llama")
    with LocalSwarm(str(path), [(0, 2)], server_args=LIMITS, env=TEST_ENV) as local:
        local.add_server((2, 4), extra_args=["--cache-tokens", str(SMALL_CACHE), "--peer-cache-share", "1"])
        client = DistributedCausalLM.connect(str(path), local.initial_peers)
        try:
            wait_covered(client.swarm, client.num_blocks)
            yield Swarm(path, local, client)
        finally:
            client.close()


def assert_one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def assert_still_serving(swarm: Swarm, index: int = 0) -> None:
    """The server answers a good forward and a good session correctly, and has logged no traceback."""
    child = swarm.local.servers[index]
    assert child.process.poll() is None, f"server {index} died:\n{child.tail()}"
    start, end = child.ready["blocks"]
    hidden = torch.randn(1, 3, HIDDEN, generator=torch.Generator().manual_seed(index))
    with torch.inference_mode():
        expected = swarm.span(hidden, start=start, end=end)
    torch.testing.assert_close(forward(swarm.client.swarm, swarm.peer(index), hidden, start, end), expected)
    with RawStream(swarm.client.swarm, swarm.peer(index)) as stream:
        stream.open(start=start, end=end, max_length=4)
        torch.testing.assert_close(stream.step(hidden, 0), expected)
    assert "Traceback" not in child.tail(), child.tail()


def open_stream(swarm: Swarm, max_length: int = 8, batch_size: int = 1) -> RawStream:
    stream = RawStream(swarm.client.swarm, swarm.peer(0))
    stream.open(start=0, end=2, batch_size=batch_size, max_length=max_length)
    return stream


def test_good_requests_are_answered(swarm: Swarm) -> None:
    assert swarm.info(0)["start"] == 0 and swarm.info(0)["max_session_length"] == 32
    assert_still_serving(swarm, 0)
    assert_still_serving(swarm, 1)


@pytest.mark.parametrize(
    ("shape", "got"),
    [((1, 3, HIDDEN - 1), "(1, 3, 63)"), ((3, HIDDEN), "(3, 64)"), ((1, 0, HIDDEN), "(1, 0, 64)")],
    ids=["narrow", "two-dimensional", "no-tokens"],
)
def test_hidden_states_of_the_wrong_shape(swarm: Swarm, shape: tuple[int, ...], got: str) -> None:
    expected = f"hidden states must have shape (batch, tokens, {HIDDEN}), got {got}"
    with pytest.raises(RemoteError) as caught:
        forward(swarm.client.swarm, swarm.peer(0), torch.zeros(shape), 0, 2)
    assert_one_line(caught.value, expected)
    with open_stream(swarm) as stream:
        with pytest.raises(RemoteError) as caught:
            stream.step(torch.zeros(shape), 0)
        assert_one_line(caught.value, expected)
        assert stream.step(torch.zeros(1, 2, HIDDEN), 0).shape == (1, 2, HIDDEN)  # the session survives
    assert_still_serving(swarm)


def test_hidden_states_of_a_wrong_dtype(swarm: Swarm) -> None:
    ids = torch.ones(1, 3, HIDDEN, dtype=torch.int64)
    with pytest.raises(RemoteError) as caught:
        forward(swarm.client.swarm, swarm.peer(0), ids, 0, 2)
    assert_one_line(caught.value, "hidden states must be floating point, got torch.int64")
    with open_stream(swarm) as stream, pytest.raises(RemoteError) as caught:
        stream.step(ids, 0)
    assert_one_line(caught.value, "must be floating point, got torch.int64")
    assert_still_serving(swarm)


def test_half_precision_input_is_converted(swarm: Swarm) -> None:
    hidden = torch.randn(1, 2, HIDDEN, dtype=torch.bfloat16)
    output = forward(swarm.client.swarm, swarm.peer(0), hidden, 0, 2)
    assert output.dtype == torch.float32 and output.shape == (1, 2, HIDDEN)


def test_step_past_the_session_maximum_length(swarm: Swarm) -> None:
    with open_stream(swarm, max_length=8) as stream:
        stream.step(torch.zeros(1, 6, HIDDEN), 0)
        with pytest.raises(RemoteError) as caught:
            stream.step(torch.zeros(1, 3, HIDDEN), 6)
        assert_one_line(caught.value, "step would reach 9 tokens, past the session's maximum length 8")
        assert stream.step(torch.zeros(1, 2, HIDDEN), 6).shape == (1, 2, HIDDEN)
    assert_still_serving(swarm)


def test_session_longer_than_the_server_allows(swarm: Swarm) -> None:
    for max_length in (33, 0, None, "long"):
        with pytest.raises(RemoteError) as caught:
            open_stream(swarm, max_length=max_length)
        assert_one_line(caught.value, f"max length must be between 1 and 32, got {max_length!r}")
    assert_still_serving(swarm)


def test_client_refuses_a_step_past_its_session_length(swarm: Swarm) -> None:
    with swarm.client.inference_session(max_length=4) as session:
        session.step(torch.zeros(1, 3, HIDDEN))
        with pytest.raises(ValueError, match="step would reach 5 tokens, past the session's maximum length 4"):
            session.step(torch.zeros(1, 2, HIDDEN))
        assert session.step(torch.zeros(1, 1, HIDDEN)).shape == (1, 1, HIDDEN)


def wait_for_free_cache(swarm: Swarm, tokens: int, timeout: float = 20.0) -> None:
    """Sessions of earlier tests are released when the server sees their streams end, not at once."""
    deadline = time.monotonic() + timeout
    while swarm.info(1)["free_cache_tokens"] < tokens:
        if time.monotonic() > deadline:
            pytest.fail(f"server 1 still has only {swarm.info(1)['free_cache_tokens']} free cache tokens")
        time.sleep(0.2)


def test_session_over_the_cache_budget(swarm: Swarm) -> None:
    wait_for_free_cache(swarm, SMALL_CACHE)
    held = RawStream(swarm.client.swarm, swarm.peer(1))
    held.open(start=2, end=4, max_length=32)
    try:
        assert swarm.info(1)["free_cache_tokens"] == SMALL_CACHE - 32
        for batch_size, max_length in ((1, 32), (3, 8)):
            with pytest.raises(RemoteError) as caught, RawStream(swarm.client.swarm, swarm.peer(1)) as refused:
                refused.open(start=2, end=4, batch_size=batch_size, max_length=max_length)
            assert_one_line(
                caught.value,
                f"a session of batch {batch_size} x {max_length} tokens on 2 blocks needs",
                "KiB of attention cache but only 8.0 KiB of 24.0 KiB are free; try a shorter max length",
            )
        with RawStream(swarm.client.swarm, swarm.peer(1)) as fits:  # what is left still serves
            fits.open(start=2, end=4, max_length=SMALL_CACHE - 32)
            assert fits.step(torch.zeros(1, 1, HIDDEN), 0).shape == (1, 1, HIDDEN)
        assert held.step(torch.zeros(1, 5, HIDDEN), 0).shape == (1, 5, HIDDEN)
    finally:
        held.close()
    wait_for_free_cache(swarm, SMALL_CACHE)  # closed sessions give their cache back
    assert_still_serving(swarm, 1)


def test_whole_model_session_over_the_budget(swarm: Swarm) -> None:
    """Through the client's own session: the refusal reaches the caller as one line that says why."""
    wait_for_free_cache(swarm, SMALL_CACHE)
    with RawStream(swarm.client.swarm, swarm.peer(1)) as held:
        held.open(start=2, end=4, max_length=32)
        with pytest.raises(Exception) as caught, swarm.client.inference_session(max_length=20) as session:
            session.step(torch.zeros(1, 1, HIDDEN))
    assert_one_line(caught.value, "attention cache")
    wait_for_free_cache(swarm, SMALL_CACHE)
    assert_still_serving(swarm, 1)


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        (b"\xc1\x00garbage", "malformed message"),
        (msgpack.packb([0, 2, 8]), "malformed message: metadata is not a map"),
        (msgpack.packb({"start": "zero", "end": 2, "max_length": 8}), "blocks zero:2 are not within"),
        (msgpack.packb({"start": 0, "end": 2, "max_length": 8, "batch_size": 0}), "batch size must be a positive"),
    ],
    ids=["not-msgpack", "not-a-map", "text-block-index", "zero-batch"],
)
def test_malformed_metadata_opening_a_session(swarm: Swarm, metadata: bytes, fragment: str) -> None:
    with pytest.raises(RemoteError) as caught, RawStream(swarm.client.swarm, swarm.peer(0)) as stream:
        stream.send(runtime_pb2.ExpertRequest(metadata=metadata))
    assert_one_line(caught.value, fragment)
    assert_still_serving(swarm)


def test_malformed_step_and_forward_messages(swarm: Swarm) -> None:
    hidden = wire.request([torch.zeros(1, 1, HIDDEN)]).tensors
    broken_tensor = runtime_pb2.Tensor(buffer=b"\x00" * 7, size=[1, 1, HIDDEN], dtype="float32")
    with open_stream(swarm) as stream:
        for message, fragment in (
            (runtime_pb2.ExpertRequest(tensors=hidden, metadata=b"\xc1"), "malformed message"),
            (runtime_pb2.ExpertRequest(tensors=[broken_tensor], metadata=msgpack.packb({"position": 0})), "malformed"),
            (wire.request(position=0), "an inference step carries 1 tensor (hidden states), got 0"),
            (wire.request([torch.zeros(1, 1, HIDDEN)] * 2, position=0), "carries 1 tensor (hidden states), got 2"),
        ):
            with pytest.raises(RemoteError) as caught:
                stream.send(message)
            assert_one_line(caught.value, fragment)
        assert stream.step(torch.zeros(1, 1, HIDDEN), 0).shape == (1, 1, HIDDEN)
    garbage = runtime_pb2.ExpertRequest(tensors=hidden, metadata=b"\xc1")
    with pytest.raises(RemoteError) as caught:
        call(swarm.client.swarm, swarm.peer(0), wire.FORWARD_PROTOCOL, garbage)
    assert_one_line(caught.value, "malformed message")
    assert_still_serving(swarm)


def test_position_gap(swarm: Swarm) -> None:
    with open_stream(swarm) as stream:
        stream.step(torch.zeros(1, 3, HIDDEN), 0)
        for position in (5, -1, None, "3"):
            with pytest.raises(RemoteError) as caught:
                stream.step(torch.zeros(1, 1, HIDDEN), position)
            assert_one_line(caught.value, f"step position must be between 0 and 3 (tokens so far), got {position!r}")
        assert stream.step(torch.zeros(1, 1, HIDDEN), 3).shape == (1, 1, HIDDEN)
    assert_still_serving(swarm)


def test_blocks_outside_the_server_span(swarm: Swarm) -> None:
    for start, end in ((0, 4), (2, 4), (1, 1), (0, 99)):
        with pytest.raises(RemoteError) as caught:
            forward(swarm.client.swarm, swarm.peer(0), torch.zeros(1, 1, HIDDEN), start, end)
        assert_one_line(caught.value, f"blocks {start}:{end} are not within this server's blocks 0:2")
        with pytest.raises(RemoteError) as caught, RawStream(swarm.client.swarm, swarm.peer(0)) as stream:
            stream.open(start=start, end=end, max_length=8)
        assert_one_line(caught.value, f"blocks {start}:{end} are not within this server's blocks 0:2")
    assert_still_serving(swarm)


def test_batch_size_that_differs_from_the_session(swarm: Swarm) -> None:
    with open_stream(swarm, batch_size=2) as stream:
        with pytest.raises(RemoteError) as caught:
            stream.step(torch.zeros(1, 1, HIDDEN), 0)
        assert_one_line(caught.value, "this session has batch size 2, the step has 1")
        assert stream.step(torch.zeros(2, 1, HIDDEN), 0).shape == (2, 1, HIDDEN)
    assert_still_serving(swarm)


def test_forward_over_the_request_limit(swarm: Swarm) -> None:
    with pytest.raises(RemoteError) as caught:
        forward(swarm.client.swarm, swarm.peer(0), torch.zeros(2, 33, HIDDEN), 0, 2)
    assert_one_line(caught.value, "request carries 66 tokens, more than this server's limit of 64")
    assert_still_serving(swarm)


def test_backward_with_mismatched_gradients(swarm: Swarm) -> None:
    hidden, grads = torch.zeros(1, 3, HIDDEN), torch.zeros(1, 2, HIDDEN)
    with pytest.raises(RemoteError) as caught:
        call(swarm.client.swarm, swarm.peer(0), wire.BACKWARD_PROTOCOL, wire.request([hidden, grads], start=0, end=2))
    assert_one_line(caught.value, "output gradients have shape (1, 2, 64), inputs (1, 3, 64)")
    with pytest.raises(RemoteError) as caught:
        call(swarm.client.swarm, swarm.peer(0), wire.BACKWARD_PROTOCOL, wire.request([hidden], start=0, end=2))
    assert_one_line(caught.value, "backward takes hidden states, output gradients and optional prompts, got 1")
    assert_still_serving(swarm)


def test_a_session_survives_other_clients_bad_requests(swarm: Swarm) -> None:
    hidden = torch.randn(1, 6, HIDDEN, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = swarm.span(hidden, start=0, end=2)
    with open_stream(swarm) as good:
        first = good.step(hidden[:, :4], 0)
        with open_stream(swarm) as bad, pytest.raises(RemoteError):
            bad.step(torch.zeros(1, 1, HIDDEN + 1), 0)
        with pytest.raises(RemoteError):
            forward(swarm.client.swarm, swarm.peer(0), torch.ones(1, 1, HIDDEN, dtype=torch.int64), 0, 2)
        rest = good.step(hidden[:, 4:], 4)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), expected)


def test_missing_model_fails_before_joining_any_swarm() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        DistributedCausalLM.connect("/no/such/model", ["/ip4/127.0.0.1/tcp/1/p2p/QmNotUsed"])
    assert_one_line(caught.value, "'/no/such/model' not found")
