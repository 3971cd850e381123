"""A fault-tolerant inference session: attention caches held along a chain of servers, one step per token.

This is the paper's Algorithm 1. The client remembers, for every hop of the chain, each input it sent there
and at which position. When a server fails (its connection drops, it errors, it answers something wrong, or a
step gets no answer within the step timeout), the client bans it, finds a new chain for just that hop's blocks,
replays the remembered inputs at their original positions so the new servers rebuild the same attention caches,
and goes on with the step. Replayed steps keep their original shapes (one message per original step), so the new
servers compute bit for bit what the old one did and the generated tokens are the same as without the failure.

A step does not come back to the client between hops: it goes to the first server with the list of the servers
after it (and the keys of the sessions there), each server pushes its output straight to the next one, and every
server still answers the client, whose record of each hop's inputs stays complete for a replay. A server that could
not push says so and the client sends that hop the step itself; after a failure the rest of the step is sent under
a new step number, so answers to the failed attempt's pushes are skipped.

A server closes a session its client left idle for longer than the ``idle_timeout`` it announced when the
session opened. A client that comes back after such a pause (a user reading the answer) reopens that hop the
same way, without blaming anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from engine import wire
from engine.client.answers import BadAnswer, check_answer, wire_dtype
from engine.client.router import RetryBudget, is_server_fault
from engine.client.routing import Hop, MissingBlocksError
from engine.client.swarm import SwarmConnection

logger = logging.getLogger(__name__)

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


@dataclass
class HopState:
    """One hop of a session's chain: its open stream and every input sent through it (for a replay)."""

    stream: InferenceStream
    history: History = field(default_factory=list)

    @property
    def hop(self) -> Hop:
        return self.stream.hop


def _expired(error: Exception) -> bool:
    return isinstance(error, wire.RemoteError) and error.expired


class InferenceSession:
    """Runs the remote blocks one step at a time, keeping each server's cache between steps, surviving failures.

    ``step`` is blocking and meant for the caller's thread; the network work runs on the swarm loop. A step
    survives up to ``max_retries`` server failures; after that, or when no server holds some blocks, it raises
    ``MissingBlocksError`` naming those blocks.
    """

    def __init__(
        self,
        swarm: SwarmConnection,
        num_blocks: int,
        max_length: int,
        batch_size: int = 1,
        step_timeout: float | None = None,
        max_retries: int | None = None,
        adapter: str | None = None,
        prompts: torch.Tensor | None = None,
    ):
        self.swarm = swarm
        self.adapter = adapter  # LoRA adapter of the whole session (None: the base model)
        self.prompts = prompts  # deep prompts (blocks, batch, prefix, hidden); servers add them at every step
        self.router = swarm.router
        self.num_blocks = num_blocks
        self.max_length = max_length
        self.batch_size = batch_size
        self.step_timeout = swarm.settings.step_timeout if step_timeout is None else step_timeout
        self.max_retries = swarm.settings.max_retries if max_retries is None else max_retries
        self.position = 0
        self.hops: list[HopState] = []
        self.recoveries = 0  # how many times a failed hop was replaced (diagnostics, benchmarks)
        self.reopened = 0  # how many times a hop idle past its server's timeout was reopened (no failure)
        self._steps_sent = 0  # steps are numbered, so that a server drops a push of a step it computed already
        self.pushed = 0  # hop inputs a server passed straight to the next one (diagnostics, benchmarks)
        self._closed = False

    @property
    def route(self) -> list[Hop]:
        return [state.hop for state in self.hops]

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

    async def _step(self, hidden: torch.Tensor) -> torch.Tensor:
        budget = RetryBudget(self.max_retries)
        if not self.hops:
            self.hops = await self._build(0, self.num_blocks, [], budget)
        position, index = self.position, 0
        self._steps_sent += 1
        number, pushed = self._steps_sent, False  # pushed: the previous server handed this hop its input
        while index < len(self.hops):
            state = self.hops[index]
            try:
                if state.stream.expiring:
                    raise wire.RemoteError(state.hop.peer_id, "session idle past the server's timeout", expired=True)
                if pushed:
                    self.pushed += 1
                    output, pushed = await state.stream.pushed_step(hidden, number, self.step_timeout)
                else:
                    targets = self._push_targets(index)
                    output, pushed = await state.stream.numbered_step(
                        hidden, position, number, self.step_timeout, targets
                    )
            except Exception as error:
                # The rest of the step is sent anew under a new number: answers to pushes of the old one (perhaps
                # computed from a broken server's output) are skipped, and pushes of the new one are taken.
                self._steps_sent += 1
                number, pushed = self._steps_sent, False
                if not (_expired(error) or is_server_fault(error)):
                    raise  # the request itself was refused: the session stays as it was
                state.stream.abort()
                if _expired(error):
                    self.reopened += 1  # nobody failed: open the hop again and replay, without a ban
                else:
                    self.router.recover(state.hop, error, budget)
                    self.recoveries += 1
                await self._replace(index, state, budget)
                continue  # the same step, on the new hop(s)
            state.history.append((position, hidden))
            hidden = output
            index += 1
        return hidden

    def _push_targets(self, index: int) -> list[dict] | None:
        """The servers after hop ``index`` (peer ids and push keys), for its server to push the step's output along
        the chain; None where pushes are off (``ClientSettings.no_push``) or it is the last hop."""
        if self.swarm.settings.no_push or index + 1 >= len(self.hops):
            return None
        return [{"peer": state.hop.peer_id, "key": state.stream.push_key} for state in self.hops[index + 1 :]]

    async def _replace(self, index: int, state: HopState, budget: RetryBudget) -> None:
        """Put a new chain for ``state``'s blocks in its place, its caches rebuilt from the hop's history."""
        began = time.perf_counter()
        replacement = await self._build(state.hop.start, state.hop.end, state.history, budget)
        self.hops[index : index + 1] = replacement
        logger.info(
            "blocks %d:%d moved to %s in %.3f s, replaying %d steps",
            state.hop.start,
            state.hop.end,
            ", ".join(f"{new.hop.start}:{new.hop.end}@{new.hop.peer_id[-8:]}" for new in replacement),
            time.perf_counter() - began,
            len(state.history),
        )

    async def _build(self, start: int, end: int, history: History, budget: RetryBudget) -> list[HopState]:
        """Open a chain over [start, end) and replay ``history`` through it, retrying on other servers."""
        excluded: set[str] = set()  # servers that refused this session (e.g. cache full): try the others
        refusal: wire.RemoteError | None = None
        while True:
            try:
                route = await self.router.inference_chain(
                    start, end, self.batch_size * self.max_length, excluded, self.adapter
                )
            except MissingBlocksError:
                if refusal is not None:
                    raise refusal from None  # every server that holds the blocks refused: say why
                raise
            opened = await asyncio.gather(
                *(
                    InferenceStream.open(
                        self.swarm.p2p,
                        hop,
                        self.batch_size,
                        self.max_length,
                        self.step_timeout,
                        self.adapter,
                        self.prompts,
                    )
                    for hop in route
                ),
                return_exceptions=True,
            )
            streams = [stream for stream in opened if isinstance(stream, InferenceStream)]
            failures = [(hop, error) for hop, error in zip(route, opened, strict=True) if isinstance(error, Exception)]
            if len(streams) + len(failures) < len(opened):  # a cancellation: not a server's doing
                raise next(error for error in opened if isinstance(error, BaseException))
            if failures:
                for stream in streams:
                    await stream.close()
                for hop, error in failures:
                    if isinstance(error, wire.RemoteError) and not error.unavailable:
                        excluded.add(hop.peer_id)  # it refused this session; others may take it
                        refusal = error
                    else:
                        self.router.recover(hop, error, budget)
                continue
            hops = [HopState(stream) for stream in streams]
            failure = await self._replay(hops, history)
            if failure is not None:
                for stream in streams:
                    stream.abort()
                self.router.recover(*failure, budget)
                continue
            for stream in streams:
                self.router.served(stream.hop.peer_id)
            return hops

    async def _replay(self, hops: list[HopState], history: History) -> tuple[Hop, Exception] | None:
        """Replay ``history`` through ``hops`` in order (each hop's outputs are the next one's inputs).

        Returns the hop that failed and its error, or None when every hop has rebuilt its cache.
        """
        inputs = merge_steps(history) if self.swarm.settings.batched_replay else history
        for state in hops:
            state.history = list(inputs)
            if not inputs:
                continue
            try:
                outputs = await state.stream.replay(inputs, self.step_timeout)
            except Exception as error:
                return state.hop, error
            inputs = [(position, output) for (position, _), output in zip(inputs, outputs, strict=True)]
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.hops and not self.swarm.loop.is_closed():
            self.swarm.run(self._close_streams(), timeout=10)

    async def _close_streams(self) -> None:
        await asyncio.gather(*(state.stream.close() for state in self.hops))

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
