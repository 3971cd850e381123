"""One open inference stream to one server (``InferenceStream``), and the history of steps sent through it.

``session.py`` strings these streams into a fault-tolerant chain; ``shadow.py`` uses them for a second chain that
spot-checks a hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from engine import wire
from engine.client.answers import BadAnswer, check_answer, wire_dtype
from engine.client.routing import Hop

History = list[tuple[int, torch.Tensor]]  # (position, hidden states) of every step sent to a hop

# A hop idle for this share of its server's idle timeout is reopened before the next step rather than risk
# stepping into a session the server is closing at that moment.
IDLE_MARGIN = 0.9
# Share of the step timeout a server may spend pushing a step's output to the next server before it answers that it
# could not (then the client sends that server the step itself): a next server that hangs is blamed, not this one.
PUSH_SHARE = 0.25


class InferenceStream:
    """An open inference stream to one server, for blocks [hop.start, hop.end).

    It reads and writes the stream framing itself (``engine.wire``) instead of going through a stub: a stub's
    response iterator waits for its request iterator to finish after the connection drops, which would turn every
    dead server into a step timeout; here a closed connection is a ``ConnectionError`` at once. It also lets a
    replay send all its steps before reading the first answer. Hidden states go out in the server's dtype when it
    is 16-bit; answers are checked (``check_answer``) and come back in the dtype the caller sent.
    """

    def __init__(self, hop: Hop, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.hop, self._reader, self._writer = hop, reader, writer
        self.idle_timeout = float("inf")  # as the server announced it when the session opened
        self.last_used = time.monotonic()
        # the secret under which this session takes steps pushed by the previous server of the chain
        self.push_key = secrets.token_hex(16)

    @classmethod
    async def open(
        cls,
        p2p: P2P,
        hop: Hop,
        batch_size: int,
        max_length: int,
        timeout: float,
        adapter: str | None = None,
        prompts: torch.Tensor | None = None,
    ) -> InferenceStream:
        """Open the session on the server; ``adapter`` and the hop's slice of deep ``prompts`` apply to every step."""
        async with asyncio.timeout(timeout):
            _, reader, writer = await p2p.call_binary_stream_handler(
                PeerID.from_base58(hop.peer_id), wire.INFERENCE_PROTOCOL
            )
        stream = cls(hop, reader, writer)
        try:
            options: dict = {"push_key": stream.push_key}
            if adapter is not None:
                options["adapter"] = adapter
            tensors = [] if prompts is None else [prompts[hop.start : hop.end].to(wire_dtype(hop.record))]
            await stream._send(
                wire.request(
                    tensors, start=hop.start, end=hop.end, batch_size=batch_size, max_length=max_length, **options
                )
            )
            ack = await stream._receive(timeout)  # the server's acknowledgement, or its reason to refuse
            idle = ack[1].get("idle_timeout")
            if isinstance(idle, int | float) and idle > 0:
                stream.idle_timeout = float(idle)
        except BaseException:
            stream.abort()
            raise
        return stream

    @property
    def name(self) -> str:
        return f"server {self.hop.peer_id[-8:]}"

    @property
    def expiring(self) -> bool:
        """True when the server may be closing this session for idleness: reopen it instead of stepping."""
        return time.monotonic() - self.last_used >= IDLE_MARGIN * self.idle_timeout

    async def _send(self, message: runtime_pb2.ExpertRequest) -> None:
        self.last_used = time.monotonic()
        await wire.send_message(message, self._writer)

    async def _receive(self, timeout: float) -> tuple[list[torch.Tensor], dict]:
        try:
            async with asyncio.timeout(timeout):
                message = await wire.receive_message(self._reader, runtime_pb2.ExpertResponse)
        except asyncio.IncompleteReadError:
            raise ConnectionError(f"{self.name} closed the session") from None
        except TimeoutError:
            raise TimeoutError(f"{self.name} did not answer within {timeout:g} s") from None
        except wire.BadRequest as error:  # garbage from the server is the server's fault: try another one
            raise BadAnswer(f"{self.name} sent a malformed answer: {error}") from None
        if message is None:
            raise ConnectionError(f"{self.name} closed the session")
        try:
            return wire.unpack_response(message, self.hop.peer_id)
        except wire.BadRequest as error:
            raise BadAnswer(f"{self.name} sent a malformed answer: {error}") from None

    def _output(self, answer: tuple[list[torch.Tensor], dict], hidden: torch.Tensor) -> torch.Tensor:
        tensors = answer[0]
        if len(tensors) != 1:
            raise BadAnswer(f"{self.name} answered a step with {len(tensors)} tensors instead of 1")
        return check_answer(tensors[0], hidden.shape, self.hop.record, "a step").to(hidden.dtype)

    def _step_request(self, hidden: torch.Tensor, position: int, **extra: object) -> runtime_pb2.ExpertRequest:
        return wire.request([hidden.to(wire_dtype(self.hop.record))], position=position, **extra)

    async def step(self, hidden: torch.Tensor, position: int, timeout: float) -> torch.Tensor:
        await self._send(self._step_request(hidden, position))
        return self._output(await self._receive(timeout), hidden)

    async def numbered_step(
        self, hidden: torch.Tensor, position: int, step: int, timeout: float, push: list[dict] | None = None
    ) -> tuple[torch.Tensor, bool]:
        """A step numbered ``step``, whose output the server also pushes along ``push`` (the next servers of the
        chain: peer ids and push keys); returns the output and whether the next server took it."""
        extra: dict = {"step": step}
        if push is not None:  # the server may spend a quarter of the step timeout handing the output on
            extra.update(push=push, push_timeout=timeout * PUSH_SHARE)
        await self._send(self._step_request(hidden, position, **extra))
        answer = await self._numbered_answer(step, timeout)
        return self._output(answer, hidden), bool(answer[1].get("pushed", False))

    async def pushed_step(self, hidden: torch.Tensor, step: int, timeout: float) -> tuple[torch.Tensor, bool]:
        """The answer to step ``step``, whose input ``hidden`` the previous server pushed here (the client sends
        nothing); returns the output and whether this server pushed it on in turn."""
        self.last_used = time.monotonic()
        answer = await self._numbered_answer(step, timeout)
        return self._output(answer, hidden), bool(answer[1].get("pushed", False))

    async def _numbered_answer(self, step: int, timeout: float) -> tuple[list[torch.Tensor], dict]:
        """The answer to step ``step``, skipping answers to earlier steps (pushes that arrived after the client
        sent the same step itself, on a retry)."""
        while True:
            answer = await self._receive(timeout)
            number = answer[1].get("step")
            if not isinstance(number, int) or number >= step:
                return answer

    async def replay(self, history: History, timeout: float) -> list[torch.Tensor]:
        """Send every remembered step at once and collect the outputs; the server rebuilds its cache on the way.

        Sending runs beside receiving, so a long history cannot fill both directions' buffers and deadlock.
        """

        async def send_all() -> None:
            for position, hidden in history:
                await self._send(self._step_request(hidden, position))

        sender = asyncio.create_task(send_all())
        try:
            outputs = [self._output(await self._receive(timeout), hidden) for _, hidden in history]
            await sender
        finally:
            sender.cancel()
        return outputs

    async def close(self) -> None:
        """End the session politely (the server frees its cache at once); never fails."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await wire.send_end(self._writer)
        self.abort()

    def abort(self) -> None:
        """Drop the connection without a word (a failed server); the server frees the session when it notices."""
        with contextlib.suppress(Exception):
            self._writer.close()


def merge_steps(history: History, max_bytes: int = wire.MAX_MESSAGE_BYTES // 8) -> History:
    """Consecutive steps joined into as few steps as fit in ``max_bytes`` each (for a batched replay)."""
    merged: History = []
    for position, hidden in history:
        if merged:
            start, joined = merged[-1]
            if start + joined.shape[1] == position and (joined.nbytes + hidden.nbytes) <= max_bytes:
                merged[-1] = (start, torch.cat([joined, hidden], dim=1))
                continue
        merged.append((position, hidden))
    return merged
