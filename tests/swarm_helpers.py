"""Helpers for tests that run real swarms: waiting for servers, and raw RPCs over a real client connection.

Not a test module. Unlike ``InferenceSession``, ``RawStream`` sends any message (a malformed one included) and
keeps the stream open after an error answer, as the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import torch
from hivemind.p2p import PeerID
from hivemind.proto import runtime_pb2

from agent.local_swarm import Child, LocalSwarm
from engine import wire
from engine.client.model import DistributedCausalLM
from engine.client.swarm import SwarmConnection
from engine.records import ServerState
from engine.server.faults import FAULT_VARIABLE

TIMEOUT = 60.0


class PreferPeer(random.Random):
    """Routing randomness that takes ``peer`` whenever it is offered: makes the training route go through the
    server the test is about to kill (``make_route`` draws among equivalent servers with ``rng.choices``)."""

    def __init__(self, peer: str):
        super().__init__(0)
        self.peer = peer

    def choices(self, population, weights=None, **kwargs):
        preferred = [record for record in population if record.peer_id == self.peer]
        return preferred[:1] or super().choices(population, weights=weights, **kwargs)


def wait_ready(children: Sequence[Child], timeout: float = 300.0) -> None:
    """Until every child printed its READY line (servers started with ``LocalSwarm.add_server(wait=False)``)."""
    deadline = time.monotonic() + timeout
    for child in children:
        child.ready_event.wait(max(0.0, deadline - time.monotonic()))
        if child.ready is None:
            raise RuntimeError(f"{child.name} did not start:\n{child.tail()}")


def wait_covered(swarm: SwarmConnection, num_blocks: int, timeout: float = 60.0) -> None:
    """Until every block has an online record: a server prints READY while its first announcement may be in flight."""
    deadline = time.monotonic() + timeout
    while True:
        blocks = swarm.run(swarm.read_blocks(0, num_blocks), TIMEOUT)
        if all(any(item.state == ServerState.ONLINE for item in items) for items in blocks.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"blocks never all announced: {blocks}")
        time.sleep(0.5)


def call(swarm: SwarmConnection, peer_id: str, protocol: str, message: runtime_pb2.ExpertRequest):
    """One unary RPC (``wire.FORWARD_PROTOCOL``...); an error answer raises ``RemoteError``."""
    answer = swarm.run(wire.call(swarm.p2p, peer_id, protocol, message, TIMEOUT), TIMEOUT)
    return wire.unpack_response(answer, peer_id)


def forward(swarm: SwarmConnection, peer_id: str, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
    tensors, _ = call(swarm, peer_id, wire.FORWARD_PROTOCOL, wire.request([hidden], start=start, end=end))
    return tensors[0]


class RawStream:
    """An inference stream to one server, driven one message at a time."""

    def __init__(self, swarm: SwarmConnection, peer_id: str):
        self.swarm, self.peer_id = swarm, peer_id
        self._outgoing: asyncio.Queue | None = None
        self._responses: AsyncIterator | None = None

    def send(self, message: runtime_pb2.ExpertRequest) -> tuple[list[torch.Tensor], dict]:
        """Send a message and wait for its answer; an error answer raises ``RemoteError``."""
        return self.swarm.run(self._send(message), TIMEOUT)

    def open(self, **metadata) -> dict:
        return self.send(wire.request(**metadata))[1]

    def step(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        return self.send(wire.request([hidden], position=position))[0][0]

    async def _send(self, message: runtime_pb2.ExpertRequest) -> tuple[list[torch.Tensor], dict]:
        if self._outgoing is None:
            self._outgoing = asyncio.Queue()
            self._outgoing.put_nowait(message)
            self._responses = await self.swarm.p2p.iterate_protobuf_handler(
                PeerID.from_base58(self.peer_id), wire.INFERENCE_PROTOCOL, self._messages(), runtime_pb2.ExpertResponse
            )
        else:
            self._outgoing.put_nowait(message)
        try:
            answer = await asyncio.wait_for(anext(self._responses), TIMEOUT)
        except StopAsyncIteration:
            raise ConnectionError("the server closed the stream") from None
        return wire.unpack_response(answer, self.peer_id)

    async def _messages(self) -> AsyncIterator[runtime_pb2.ExpertRequest]:
        while (message := await self._outgoing.get()) is not None:
            yield message

    def close(self) -> None:
        if self._outgoing is None:
            return
        self.swarm.run(self._close(), TIMEOUT)

    async def _close(self) -> None:
        self._outgoing.put_nowait(None)
        with contextlib.suppress(Exception):
            await self._responses.aclose()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def faulty_server(base: LocalSwarm, checkpoint: Path, fault: str, env: dict) -> Iterator[str]:
    """A server of blocks 0:4 with the test fault ``fault`` that joins ``base``'s DHT; yields its peer id."""
    swarm = LocalSwarm(str(checkpoint), [], env={**env, FAULT_VARIABLE: fault})
    swarm.dht = base.dht  # the same DHT and swarm, another environment
    try:
        yield swarm.add_server((0, 4)).ready["peer_id"]
    finally:
        swarm.dht = None  # the shared DHT stops with the base swarm
        swarm.stop()


def connect_covered(checkpoint: Path, swarm: LocalSwarm) -> DistributedCausalLM:
    """A client of ``swarm`` that has seen every block announced."""
    model = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
    wait_covered(model.swarm, model.num_blocks)
    return model
