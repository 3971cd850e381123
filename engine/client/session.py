"""An inference session: attention caches held along a route of servers, one step per generated token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import torch
from hivemind.p2p import P2P, PeerID

from engine import wire
from engine.client.routing import Hop, make_route
from engine.client.swarm import SwarmConnection
from engine.server.handler import BlockServicer


class SpanStream:
    """An open inference stream to one server, for blocks [hop.start, hop.end)."""

    def __init__(self, hop: Hop, queue: asyncio.Queue, responses: AsyncIterator):
        self.hop, self._queue, self._responses = hop, queue, responses

    @classmethod
    async def open(cls, p2p: P2P, hop: Hop, batch_size: int, max_length: int, timeout: float) -> SpanStream:
        queue: asyncio.Queue = asyncio.Queue()

        async def outgoing() -> AsyncIterator:
            while (message := await queue.get()) is not None:
                yield message

        queue.put_nowait(wire.request(start=hop.start, end=hop.end, batch_size=batch_size, max_length=max_length))
        stub = BlockServicer.get_stub(p2p, PeerID.from_base58(hop.peer_id))
        responses = await asyncio.wait_for(stub.rpc_inference(outgoing()), timeout)
        stream = cls(hop, queue, responses)
        await stream._receive(timeout)  # the server's acknowledgement, or its reason to refuse
        return stream

    async def _receive(self, timeout: float) -> list[torch.Tensor]:
        try:
            message = await asyncio.wait_for(anext(self._responses), timeout)
        except StopAsyncIteration:
            raise ConnectionError(f"server {self.hop.peer_id[-8:]} closed the session") from None
        tensors, _ = wire.unpack_response(message, self.hop.peer_id)
        return tensors

    async def step(self, hidden: torch.Tensor, position: int, timeout: float) -> torch.Tensor:
        self._queue.put_nowait(wire.request([hidden], position=position))
        tensors = await self._receive(timeout)
        if len(tensors) != 1 or tensors[0].shape != hidden.shape:
            raise ConnectionError(f"server {self.hop.peer_id[-8:]} answered a step with a malformed tensor")
        return tensors[0]

    async def close(self) -> None:
        self._queue.put_nowait(None)
        aclose = getattr(self._responses, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):  # the stream may already be broken; closing must not fail
                await aclose()


class InferenceSession:
    """Runs the remote blocks one step at a time, keeping each server's cache between steps.

    ``step`` is blocking and meant for the caller's thread; the network work runs on the swarm loop.
    """

    def __init__(
        self,
        swarm: SwarmConnection,
        num_blocks: int,
        max_length: int,
        batch_size: int = 1,
        step_timeout: float = 60.0,
    ):
        self.swarm = swarm
        self.num_blocks = num_blocks
        self.max_length = max_length
        self.batch_size = batch_size
        self.step_timeout = step_timeout
        self.position = 0
        self.streams: list[SpanStream] = []
        self._closed = False

    @property
    def route(self) -> list[Hop]:
        return [stream.hop for stream in self.streams]

    async def _open(self) -> None:
        blocks = await self.swarm.read_blocks(0, self.num_blocks)
        route = make_route(blocks, 0, self.num_blocks)
        self.streams = list(
            await asyncio.gather(
                *(
                    SpanStream.open(self.swarm.p2p, hop, self.batch_size, self.max_length, self.step_timeout)
                    for hop in route
                )
            )
        )

    async def _step(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.streams:
            await self._open()
        for stream in self.streams:
            hidden = await stream.step(hidden, self.position, self.step_timeout)
        return hidden

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Send new tokens' hidden states (batch, tokens, hidden) through all blocks; returns the outputs."""
        if self._closed:
            raise RuntimeError("this inference session is closed")
        if self.position + hidden.shape[1] > self.max_length:
            raise ValueError(
                f"step would reach {self.position + hidden.shape[1]} tokens, past the session's maximum length "
                f"{self.max_length}"
            )
        output = self.swarm.run(self._step(hidden))
        self.position += hidden.shape[1]
        return output

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.streams and not self.swarm.loop.is_closed():
            self.swarm.run(self._close_streams(), timeout=10)

    async def _close_streams(self) -> None:
        await asyncio.gather(*(stream.close() for stream in self.streams))

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
