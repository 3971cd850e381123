"""The server's RPCs over hivemind P2P: ping, info, forward, backward, push (unary) and the inference stream.

Inference steps of different sessions that wait together run as one batched forward (``engine.server.batching``);
a step may go on from server to server along its client's chain (pushes, see ``_steps``).

Protocol names and the stream framing are the wire format's (``engine.wire``). Every handler turns a bad request
into a one-line error response and keeps serving; only the request that broke a rule fails. A server that is busy
(its queue or a client's share is full) or leaving answers "unavailable", so the client tries another server. An
unexpected error while computing is the server's own fault: it is logged with its traceback here and answered as
"unavailable" with its one-line cause, so the client names this server and the cause, and tries another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import torch
from hivemind.p2p import P2P, P2PContext
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo
from hivemind.proto import runtime_pb2

from engine import wire
from engine.server.backend import Session, SpanBackend
from engine.server.batching import StepBatcher, WaitingStep, step_job
from engine.server.executor import INFERENCE, TRAINING, PriorityExecutor
from engine.server.limits import Admission, RequestLimits, TooBusy
from engine.server.link import SimulatedLink
from engine.wire import BadRequest, MessageTooLarge

logger = logging.getLogger(__name__)

Response = runtime_pb2.ExpertResponse
# After refusing an oversized message, the stream is read (and dropped, a chunk at a time) for at most this long
# before it is closed: closing with unread data would reset the connection and could lose the refusal itself.
LINGER_SECONDS = 2.0
PUSH_TIMEOUT = 10.0  # most seconds a push to the next server may take before the client is told to send it itself
MAX_PUSH_TARGETS = 64
INBOX_MESSAGES = 4  # steps a session holds read ahead (from its client or pushed), not yet computed


class ComputeFailed(RuntimeError):
    """The server itself failed to compute a request (not the request's fault); the message is one line."""


class BlockServicer:
    """RPC endpoints of one server; ``info`` returns what ``describe`` gives."""

    def __init__(
        self,
        backend: SpanBackend,
        executor: PriorityExecutor,
        describe: Callable[[], dict],
        limits: RequestLimits | None = None,
        simulated_delay: float = 0.0,
        batching: bool = True,
        link: SimulatedLink | None = None,
    ):
        """``batching``: one-token steps of different sessions that wait together run as one forward; ``link``
        delays every message in and out as a wide-area link would (benchmarks)."""
        self.backend = backend
        self.executor = executor
        self.describe = describe
        self.limits = limits or RequestLimits()
        self.admission = Admission(self.limits)
        self.batcher = StepBatcher(enabled=batching)
        self.link = link or SimulatedLink()
        self._p2p: P2P | None = None  # for pushes to the next server of a client's chain
        self._push_inboxes: dict[str, asyncio.Queue] = {}  # push key -> inbox of the session that gave it
        self.simulated_delay = simulated_delay  # seconds added to every answer: tests and simulations only
        self.accepting = True  # False while draining: steps in flight finish, new work is refused as unavailable
        self.steps_in_flight = 0  # inference steps, forwards and backwards accepted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_sessions(self) -> int:
        return self.admission.open_sessions

    async def add_p2p_handlers(self, p2p: P2P) -> None:
        self._p2p = p2p
        for protocol, handler in self._unary().items():
            # a push crossed the link when its server sent it: any two peers are one link latency apart
            linked = handler if protocol == wire.PUSH_PROTOCOL else self.link.wrap(handler)
            await p2p.add_protobuf_handler(protocol, linked, runtime_pb2.ExpertRequest)
        await p2p.add_binary_stream_handler(wire.INFERENCE_PROTOCOL, self.handle_inference)

    async def remove_p2p_handlers(self, p2p: P2P) -> None:
        for protocol in self._unary():
            await p2p.remove_protobuf_handler(protocol)
        await p2p.remove_binary_stream_handler(wire.INFERENCE_PROTOCOL)

    def _unary(self) -> dict[str, Callable[[runtime_pb2.ExpertRequest, P2PContext], Awaitable[Response]]]:
        return {
            wire.PING_PROTOCOL: self.rpc_ping,
            wire.INFO_PROTOCOL: self.rpc_info,
            wire.FORWARD_PROTOCOL: self.rpc_forward,
            wire.BACKWARD_PROTOCOL: self.rpc_backward,
            wire.PUSH_PROTOCOL: self.rpc_push,
        }

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Counts a unit of work from its acceptance to its answer, so that draining can wait for it."""
        self.steps_in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.steps_in_flight -= 1
            if self.steps_in_flight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and wait for the steps in flight; False if some were still running after ``timeout``."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _compute(self, kind: int, peer: str, fn: Callable, *args: object) -> object:
        """Run ``fn`` on the compute thread within ``peer``'s share of the queue.

        An unexpected failure becomes a ``ComputeFailed`` with a one-line cause; a full queue is ``TooBusy``.
        """
        nbytes = sum(arg.nbytes for arg in args if isinstance(arg, torch.Tensor))
        with self.admission.job(peer, nbytes):
            future = self.executor.submit(kind, fn, *args)
            try:
                return await future
            except BadRequest:
                raise
            except Exception as error:
                logger.exception("%s failed on the compute thread", getattr(fn, "__name__", "compute"))
                cause = (str(error).strip().splitlines() or [""])[0]
                raise ComputeFailed(
                    f"internal error: {type(error).__name__}: {cause}" if cause else type(error).__name__
                ) from error

    def _leaving(self) -> Response:
        return wire.error_response("server is leaving the swarm; use another server", unavailable=True)

    async def _delay(self) -> None:
        if self.simulated_delay > 0:
            await asyncio.sleep(self.simulated_delay)

    async def rpc_ping(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> Response:
        """The cheapest answer, for clients measuring round trips."""
        await self._delay()
        return wire.response()

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> Response:
        await self._delay()
        return wire.response(**self.describe())

    async def handle_inference(
        self, stream: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The inference stream: its answers written as they come, the connection closed when the session ends."""
        with contextlib.closing(writer):
            answers = self._session(stream.peer_id.to_base58(), reader)
            try:
                async for answer in answers:
                    await self.link.send(answer)
                    await wire.send_message(answer, writer)
            except (ConnectionError, OSError):  # the client is gone: its session ends here
                pass
            finally:
                await answers.aclose()

    async def _receive(self, reader: asyncio.StreamReader) -> runtime_pb2.ExpertRequest | None:
        """The client's next message; None when the stream ends, TimeoutError after the idle timeout."""
        async with asyncio.timeout(self.limits.session_idle_timeout):
            try:
                message = await wire.receive_message(reader, runtime_pb2.ExpertRequest, self.limits.max_message_bytes)
            except asyncio.IncompleteReadError:
                return None
        await self.link.receive(message)
        return message

    async def _session(self, peer: str, reader: asyncio.StreamReader) -> AsyncIterator[Response]:
        """First message opens a session (start, end, batch_size, max_length, optional adapter; optional tensor:
        deep prompts for its blocks); each later one is a step. The answer to the first one carries the session's
        ``idle_timeout``: a client that waits longer reopens its session instead of stepping."""
        try:
            first = await self._receive(reader)
            if first is None:
                return
            if not self.accepting:
                yield self._leaving()
                return
            with self.admission.session(peer):
                push_key = self._push_key(first)
                session = self._open(first, peer)
                try:
                    yield wire.response(
                        session_id=session.session_id,
                        max_length=session.cache.max_length,
                        idle_timeout=self.limits.session_idle_timeout,
                    )
                    async for answer in self._steps(session, peer, reader, push_key):
                        yield answer
                finally:
                    self.backend.close_session(session)
        except MessageTooLarge as error:  # the rest of the message is still in the stream: end it here
            yield wire.error_response(str(error))
            await _discard(reader, LINGER_SECONDS)
        except TooBusy as error:
            yield wire.error_response(str(error), unavailable=True)
        except BadRequest as error:
            yield wire.error_response(str(error))
        except TimeoutError:
            yield wire.error_response(f"no session request within {self.limits.session_idle_timeout:g} s")

    def _push_key(self, first: runtime_pb2.ExpertRequest) -> str | None:
        """The key under which the session's client lets other servers push steps into it, or None."""
        key = wire.unpack(first)[1].get("push_key")
        if key is None:
            return None
        if not isinstance(key, str) or not 16 <= len(key) <= 128:
            raise BadRequest("push key must be a string of 16 to 128 characters")
        if key in self._push_inboxes:
            raise BadRequest("this push key is taken by another session; choose a new random one")
        return key

    def _open(self, first: runtime_pb2.ExpertRequest, peer: str) -> Session:
        tensors, meta = wire.unpack(first)
        if len(tensors) > 1:
            raise BadRequest(f"a session request carries at most 1 tensor (deep prompts), got {len(tensors)}")
        return self.backend.open_session(
            meta.get("start"),
            meta.get("end"),
            meta.get("batch_size", 1),
            meta.get("max_length"),
            meta.get("adapter"),
            tensors[0] if tensors else None,
            peer,
        )

    async def _steps(
        self, session: Session, peer: str, reader: asyncio.StreamReader, push_key: str | None
    ) -> AsyncIterator[Response]:
        """Steps from the client's stream and, under ``push_key``, from the previous server of its chain (pushes).

        A step may name the servers after this one (``push``: their peers and push keys): its output then goes
        straight to the first of them, with the rest of the list, and the answer says whether that worked
        (``pushed``), so the client sends that server the step itself only when it did not. Steps carry the
        client's ``step`` number: a push of a step already computed (a retry after a failure) is dropped.
        """
        # bounded: a client that sends ahead waits in its stream (as before), not in this server's memory
        inbox: asyncio.Queue = asyncio.Queue(maxsize=INBOX_MESSAGES)
        reader_task = asyncio.create_task(self._read_steps(reader, inbox))
        if push_key is not None:
            self._push_inboxes[push_key] = inbox
        last_step = -1
        try:
            while True:
                try:
                    async with asyncio.timeout(self.limits.session_idle_timeout):
                        kind, item = await inbox.get()
                except TimeoutError:
                    idle = self.limits.session_idle_timeout
                    yield wire.error_response(f"session closed after {idle:g} s without a step", expired=True)
                    return
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                received = time.perf_counter()
                try:
                    tensors, meta = wire.unpack(item) if kind == "client" else item
                    step_id = meta.get("step")
                    if kind == "push" and (not isinstance(step_id, int) or step_id <= last_step):
                        continue  # computed already: its client sent it here itself
                    if len(tensors) != 1:
                        raise BadRequest(f"an inference step carries 1 tensor (hidden states), got {len(tensors)}")
                    hidden, position = self.backend.check_step(session, tensors[0], meta.get("position"))
                    targets = _push_targets(meta.get("push"))
                    push_timeout = _push_timeout(meta.get("push_timeout"))
                except BadRequest as error:
                    yield wire.error_response(str(error))
                    continue
                if isinstance(step_id, int):
                    last_step = max(last_step, step_id)
                if not self.accepting:  # draining: the client replays this session elsewhere
                    yield self._leaving()
                    return
                with self._in_flight():
                    step = WaitingStep(self.backend.owner(session), session, hidden, position)
                    self.batcher.add(step)
                    try:
                        output, began, ended = await self._compute(
                            INFERENCE, peer, _timed(step_job(self.batcher, step)), session, hidden, position
                        )
                    except TooBusy as error:  # nothing was computed: the session is intact
                        yield wire.error_response(str(error), unavailable=True)
                        continue
                    except ComputeFailed as error:  # the cache may be half-written: end this session
                        yield wire.error_response(str(error), unavailable=True)
                        return
                    finally:
                        self.batcher.forget(step)  # a step that was refused or dropped unrun
                    extra = {} if step_id is None else {"step": step_id}
                    if targets:
                        extra["pushed"] = await self._push(output, position, step_id, targets, push_timeout)
                    await self._delay()
                    # where the step's time went on this server (profiling: benchmarks/step_profile.py)
                    timing = {"wait": began - received, "compute": ended - began, "reply": time.perf_counter() - ended}
                    yield wire.response([output], position=position, timing=timing, **extra)
        finally:
            reader_task.cancel()
            if push_key is not None:
                self._push_inboxes.pop(push_key, None)

    async def _read_steps(self, reader: asyncio.StreamReader, inbox: asyncio.Queue) -> None:
        """Move the client's messages into the session's inbox: ("client", message), then ("end", None) or
        ("error", exception) for a message that broke the stream (the session answers and ends)."""
        while True:
            try:
                message = await wire.receive_message(reader, runtime_pb2.ExpertRequest, self.limits.max_message_bytes)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                message = None
            except BadRequest as error:
                await inbox.put(("error", error))
                return
            if message is None:
                await inbox.put(("end", None))
                return
            await self.link.receive(message)
            await inbox.put(("client", message))

    async def _push(
        self, output: torch.Tensor, position: int, step_id: object, targets: list[dict], timeout: float
    ) -> bool:
        """Hand a step's output to the next server of the chain within ``timeout``; False if it did not take it.

        The client waits for this server's answer meanwhile: the timeout (the client's choice, well within its step
        timeout) keeps a next server that hangs from making this one look like the one that hangs.
        """
        first, rest = targets[0], targets[1:]
        message = wire.request(
            [output], key=first["key"], position=position, step=step_id, push=rest or None, push_timeout=timeout
        )
        try:
            await self.link.send(message)
            answer = await wire.call(self._p2p, first["peer"], wire.PUSH_PROTOCOL, message, timeout)
            wire.unpack_response(answer, first["peer"])
        except Exception as error:  # the client sends that server the step itself
            logger.info("could not push a step to server %s: %s", first["peer"][-8:], error)
            return False
        return True

    async def rpc_push(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> Response:
        """A step pushed by the previous server of a client's chain, for the session that gave out its ``key``;
        answered at once (the step's own answer goes to the client on that session's stream)."""
        try:
            tensors, meta = wire.unpack(request)
        except BadRequest as error:
            return wire.error_response(str(error))
        key = meta.get("key")
        inbox = self._push_inboxes.get(key) if isinstance(key, str) else None
        if inbox is None:
            return wire.error_response("no open session here takes pushes under this key")
        try:
            inbox.put_nowait(("push", (tensors, meta)))
        except asyncio.QueueFull:
            return wire.error_response("the session has steps waiting; its client sends this one itself")
        return wire.response()

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> Response:
        """Tensors: hidden states, then optional deep prompts. Metadata: start, end, adapter, keep (see backward)."""
        try:
            tensors, meta = wire.unpack(request)
            hidden, prompts, start, end = self._parse_batch(tensors, meta, "forward", ("hidden states",))
            adapter, keep = self._options(meta, context)
        except BadRequest as error:
            return wire.error_response(str(error))
        args = (hidden, start, end, prompts, adapter, keep)
        return await self._unary_compute(context, self.backend.forward, args)

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> Response:
        """Tensors: hidden states, gradient of the output, then optional deep prompts.

        A ``keep`` id that names an earlier forward of this client lets the server reuse that forward's graph.
        """
        try:
            tensors, meta = wire.unpack(request)
            hidden, prompts, start, end = self._parse_batch(
                tensors, meta, "backward", ("hidden states", "output gradients")
            )
            adapter, keep = self._options(meta, context)
            grad_output = self.backend.check_gradients(tensors[1], hidden)
        except BadRequest as error:
            return wire.error_response(str(error))
        args = (hidden, grad_output, start, end, prompts, adapter, keep)
        return await self._unary_compute(context, self.backend.backward, args)

    async def _unary_compute(self, context: P2PContext, fn: Callable, args: tuple) -> Response:
        """A checked forward or backward, run as a training job; its answer or its one-line refusal."""
        if not self.accepting:
            return self._leaving()
        with self._in_flight():
            try:
                result = await self._compute(TRAINING, context.remote_id.to_base58(), fn, *args)
            except TooBusy as error:
                return wire.error_response(str(error), unavailable=True)
            except ComputeFailed as error:
                return wire.error_response(str(error), unavailable=True)
            await self._delay()
            return wire.response(result if isinstance(result, list) else [result])

    def _options(self, meta: dict, context: P2PContext) -> tuple[str | None, tuple[str, str] | None]:
        """The request's adapter and its kept-forward key (scoped to the calling peer: ids are the client's)."""
        adapter = self.backend.adapters.check(meta.get("adapter"))
        keep = self.backend.check_keep(meta.get("keep"))
        return adapter, (None if keep is None else (context.remote_id.to_base58(), keep))

    def _parse_batch(self, tensors: list, meta: dict, method: str, required: tuple[str, ...]):
        """The batch, deep prompts and block range of a forward or backward, whose ``required`` tensors come first."""
        count = len(required)
        if len(tensors) not in (count, count + 1):
            raise BadRequest(f"{method} takes {', '.join(required)} and optional prompts, got {len(tensors)}")
        start, end = self.backend.check_range(meta.get("start"), meta.get("end"))
        hidden = self.backend.check_batch(tensors[0])
        prompts = tensors[-1] if len(tensors) == count + 1 else None
        return hidden, self.backend.check_prompts(prompts, hidden, start, end), start, end


def _push_targets(targets: object) -> list[dict]:
    """A step's ``push`` list (the next servers of the chain, each a peer id and a push key), checked."""
    if targets is None:
        return []
    if not isinstance(targets, list) or len(targets) > MAX_PUSH_TARGETS:
        raise BadRequest(f"push must be a list of at most {MAX_PUSH_TARGETS} servers")
    for target in targets:
        if not (
            isinstance(target, dict)
            and isinstance(target.get("peer"), str)
            and 0 < len(target["peer"]) <= 128
            and isinstance(target.get("key"), str)
            and 0 < len(target["key"]) <= 128
        ):
            raise BadRequest("each push target must be {peer: peer id, key: push key}")
    return targets


def _push_timeout(value: object) -> float:
    """Seconds a push may take: the client's choice (``push_timeout``), at most ``PUSH_TIMEOUT``."""
    if value is None:
        return PUSH_TIMEOUT
    if not isinstance(value, int | float) or not value > 0:
        raise BadRequest(f"push timeout must be a positive number of seconds, got {value!r}")
    return min(float(value), PUSH_TIMEOUT)


def _timed(fn: Callable) -> Callable:
    """``fn`` that also returns when it started and ended (``time.perf_counter``), for the step's timing."""

    def run(*args: object) -> tuple[object, float, float]:
        began = time.perf_counter()
        result = fn(*args)
        return result, began, time.perf_counter()

    run.__name__ = getattr(fn, "__name__", "compute")
    return run


async def _discard(reader: asyncio.StreamReader, seconds: float) -> None:
    """Read and drop what the peer still sends, in bounded chunks, until it closes or ``seconds`` pass."""
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(seconds):
            while await reader.read(2**16):
                pass
