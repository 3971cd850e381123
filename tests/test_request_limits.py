"""Request limits of a real server: a huge step, a huge stream message, more sessions than one client may open,
and a full compute queue are each refused with one line, and another client is served normally afterwards.

Servers are real ``nectar serve`` processes on 127.0.0.1; each client is its own P2P peer (its own
``SwarmConnection``). The full queue is made with the test-only ``slow-compute`` fault (``engine.server.faults``):
every compute call of that server takes a second, so concurrent requests pile up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch
from conftest import TEST_ENV
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2
from swarm_helpers import TIMEOUT, RawStream, forward, wait_covered

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.swarm import SwarmConnection
from engine.records import default_dht_prefix
from engine.server.faults import FAULT_VARIABLE
from engine.wire import RemoteError

pytestmark = pytest.mark.slow

HIDDEN = 64
LIMITS = ["--max-request-tokens", "64", "--max-session-length", "128", "--max-sessions-per-peer", "2"]


class Clients:
    """A swarm of one server for blocks 0:4, and two clients (two peers) connected to it."""

    def __init__(self, swarm: LocalSwarm, prefix: str):
        self.swarm = swarm
        self.first = SwarmConnection(swarm.initial_peers, prefix)
        self.second = SwarmConnection(swarm.initial_peers, prefix)
        wait_covered(self.first, 4)

    @property
    def peer(self) -> str:
        return self.swarm.servers[0].ready["peer_id"]

    def close(self) -> None:
        self.first.close()
        self.second.close()


def start(path, args: list[str], env: dict | None = None) -> Iterator[Clients]:
    with LocalSwarm(str(path), [(0, 4)], args, env={**TEST_ENV, **(env or {})}) as swarm:
        clients = Clients(swarm, default_dht_prefix(str(path)))
        try:
            yield clients
        finally:
            clients.close()


@pytest.fixture(scope="module")
def clients(tiny_checkpoints) -> Iterator[Clients]:
    yield from start(tiny_checkpoints("llama"), LIMITS)


def assert_served(clients: Clients, connection: SwarmConnection | None = None) -> None:
    """A client (the second one unless told) gets a correct forward and a working session."""
    connection = connection or clients.second
    hidden = torch.randn(1, 3, HIDDEN, generator=torch.Generator().manual_seed(0))
    output = forward(connection, clients.peer, hidden, 0, 4)
    assert output.shape == hidden.shape and torch.isfinite(output).all()
    with RawStream(connection, clients.peer) as stream:
        stream.open(start=0, end=4, max_length=8)
        torch.testing.assert_close(stream.step(hidden, 0), output)
    child = clients.swarm.servers[0]
    assert child.process.poll() is None and "Traceback" not in child.tail(), child.tail()


def test_a_huge_step_is_refused_and_the_session_goes_on(clients: Clients) -> None:
    with RawStream(clients.first, clients.peer) as stream:
        stream.open(start=0, end=4, max_length=128)
        with pytest.raises(RemoteError, match="request carries 65 tokens, more than this server's limit of 64"):
            stream.step(torch.zeros(1, 65, HIDDEN), 0)
        assert stream.step(torch.zeros(1, 64, HIDDEN), 0).shape == (1, 64, HIDDEN)
    refused = pytest.raises(RemoteError, match="batch size must be a positive integer up to 64, got 100000")
    with refused, RawStream(clients.first, clients.peer) as stream:  # refused before any cache is allocated
        stream.open(start=0, end=4, batch_size=100_000, max_length=1)
    assert_served(clients)


def test_a_huge_stream_message_is_refused_before_it_is_read(clients: Clients) -> None:
    announced = 2**40  # a terabyte: the server must not wait for it, let alone allocate it

    async def send_huge() -> tuple[runtime_pb2.ExpertResponse, object]:
        _, reader, writer = await clients.first.p2p.call_binary_stream_handler(
            PeerID.from_base58(clients.peer), wire.INFERENCE_PROTOCOL
        )
        writer.write(b"\x00" + announced.to_bytes(8, "big") + b"\x00" * 2**16)
        await writer.drain()
        answer = await wire.receive_message(reader, runtime_pb2.ExpertResponse)
        try:
            after = await wire.receive_message(reader, runtime_pb2.ExpertResponse)
        except asyncio.IncompleteReadError:
            after = "closed"
        writer.close()
        return answer, after

    answer, after = clients.first.run(send_huge(), TIMEOUT)
    with pytest.raises(RemoteError, match=f"message of {announced} bytes is larger than the limit of 67108864 bytes"):
        wire.unpack_response(answer, clients.peer)
    assert after in ("closed", None)  # the stream is over: what followed the header was never read
    assert_served(clients)


def test_more_sessions_than_one_client_may_open(clients: Clients) -> None:
    held = [RawStream(clients.first, clients.peer) for _ in range(2)]
    try:
        for stream in held:
            stream.open(start=0, end=4, max_length=8)
        refused = pytest.raises(RemoteError, match="this client already holds 2 sessions here")
        with refused, RawStream(clients.first, clients.peer) as third:
            third.open(start=0, end=4, max_length=8)
        assert_served(clients)  # another client opens its sessions as usual meanwhile
    finally:
        for stream in held:
            stream.close()


@pytest.fixture(scope="module")
def slow_clients(tiny_checkpoints) -> Iterator[Clients]:
    yield from start(tiny_checkpoints("llama"), ["--max-queued-jobs", "1"], {FAULT_VARIABLE: "slow-compute"})


def test_a_full_queue_refuses_as_unavailable(slow_clients: Clients) -> None:
    clients = slow_clients
    hidden = torch.zeros(1, 2, HIDDEN)

    async def burst() -> list[object]:
        calls = [
            wire.call(clients.first.p2p, clients.peer, wire.FORWARD_PROTOCOL, wire.request([hidden]), TIMEOUT)
            for _ in range(4)
        ]
        answers = await asyncio.gather(*calls)
        results = []
        for answer in answers:
            try:
                results.append(wire.unpack_response(answer, clients.peer)[0][0])
            except RemoteError as error:
                results.append(error)
        return results

    results = clients.first.run(burst(), TIMEOUT)
    refused = [result for result in results if isinstance(result, RemoteError)]
    # at most one computing and one queued; the rest refused at once (the first may still wait in the queue when
    # the others arrive, so one more may be refused)
    assert 2 <= len(refused) <= 3, results
    for error in refused:
        assert error.unavailable and "server is busy: 1 requests are waiting" in str(error)
    assert all(result.shape == hidden.shape for result in results if isinstance(result, torch.Tensor))
    assert_served(clients)
