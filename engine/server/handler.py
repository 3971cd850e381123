"""The server's RPCs over hivemind P2P: an inference stream, forward, backward and info.

Every handler turns a bad request into a one-line error response (``wire.error_response``) and keeps serving;
only the request that broke a rule fails. An unexpected error while computing is the server's own fault: it is
logged with its traceback here and answered as "unavailable" with its one-line cause, so the client names this
server and the cause, and tries another server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import AsyncIterator  # noqa: UP035 (hivemind detects streams by typing's alias, not collections.abc's)

from hivemind.p2p import P2PContext, ServicerBase
from hivemind.proto import runtime_pb2

from engine import wire
from engine.server.backend import SpanBackend
from engine.server.executor import INFERENCE, TRAINING, PriorityExecutor
from engine.wire import BadRequest

logger = logging.getLogger(__name__)


class ComputeFailed(RuntimeError):
    """The server itself failed to compute a request (not the request's fault); the message is one line."""


class BlockServicer(ServicerBase):
    """RPC endpoints of one server; ``info`` returns what ``describe`` gives."""

    def __init__(
        self,
        backend: SpanBackend,
        executor: PriorityExecutor,
        describe: Callable[[], dict],
        step_timeout: float = 300.0,
        simulated_delay: float = 0.0,
    ):
        self.backend = backend
        self.executor = executor
        self.describe = describe
        self.step_timeout = step_timeout  # a silent client's session is closed after this many seconds
        self.simulated_delay = simulated_delay  # seconds added to every answer: tests and simulations only
        self.accepting = True  # False while draining: steps in flight finish, new work is refused as unavailable
        self.active_sessions = 0
        self.steps_in_flight = 0  # inference steps, forwards and backwards accepted and not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

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

    async def _compute(self, priority: int, fn: Callable, *args: object) -> object:
        """Run ``fn`` on the compute thread; an unexpected failure becomes a ``ComputeFailed`` with a one-line cause."""
        try:
            return await self.executor.submit(priority, fn, *args)
        except BadRequest:
            raise
        except Exception as error:
            logger.exception("%s failed on the compute thread", getattr(fn, "__name__", "compute"))
            cause = (str(error).strip().splitlines() or [""])[0]
            raise ComputeFailed(
                f"internal error: {type(error).__name__}: {cause}" if cause else type(error).__name__
            ) from error

    def _leaving(self) -> runtime_pb2.ExpertResponse:
        return wire.error_response("server is leaving the swarm; use another server", unavailable=True)

    async def _delay(self) -> None:
        if self.simulated_delay > 0:
            await asyncio.sleep(self.simulated_delay)

    async def rpc_ping(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """The cheapest answer, for clients measuring round trips."""
        await self._delay()
        return wire.response()

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        await self._delay()
        return wire.response(**self.describe())

    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """First message opens a session (start, end, batch_size, max_length, optional adapter; optional tensor:
        deep prompts for its blocks); each later one is a step."""
        session = None
        try:
            first = await asyncio.wait_for(anext(requests), self.step_timeout)
            if not self.accepting:
                yield self._leaving()
                return
            tensors, meta = wire.unpack(first)
            if len(tensors) > 1:
                raise BadRequest(f"a session request carries at most 1 tensor (deep prompts), got {len(tensors)}")
            session = self.backend.open_session(
                meta.get("start"),
                meta.get("end"),
                meta.get("batch_size", 1),
                meta.get("max_length"),
                meta.get("adapter"),
                tensors[0] if tensors else None,
            )
            self.active_sessions += 1
            yield wire.response(session_id=session.session_id, max_length=session.cache.max_length)
            while True:
                try:
                    message = await asyncio.wait_for(anext(requests), self.step_timeout)
                except (TimeoutError, StopAsyncIteration):
                    return
                try:
                    tensors, meta = wire.unpack(message)
                    if len(tensors) != 1:
                        raise BadRequest(f"an inference step carries 1 tensor (hidden states), got {len(tensors)}")
                    hidden, position = self.backend.check_step(session, tensors[0], meta.get("position"))
                except BadRequest as error:
                    yield wire.error_response(str(error))
                    continue
                if not self.accepting:  # draining: the client replays this session elsewhere
                    yield self._leaving()
                    return
                with self._in_flight():
                    try:
                        output = await self._compute(INFERENCE, self.backend.inference_step, session, hidden, position)
                    except ComputeFailed as error:  # the cache may be half-written: end this session
                        yield wire.error_response(str(error), unavailable=True)
                        return
                    await self._delay()
                    yield wire.response([output], position=position)
        except StopAsyncIteration:
            return
        except TimeoutError:
            yield wire.error_response(f"no session request within {self.step_timeout:.0f} s")
        except BadRequest as error:
            yield wire.error_response(str(error))
        finally:
            if session is not None:
                self.active_sessions -= 1
                self.backend.close_session(session)

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Tensors: hidden states, then optional deep prompts. Metadata: start, end, adapter, keep (see backward)."""
        try:
            tensors, meta = wire.unpack(request)
            hidden, prompts, start, end = self._parse_batch(tensors, meta, "forward", ("hidden states",))
            adapter, keep = self._options(meta, context)
        except BadRequest as error:
            return wire.error_response(str(error))
        if not self.accepting:
            return self._leaving()
        with self._in_flight():
            try:
                output = await self._compute(TRAINING, self.backend.forward, hidden, start, end, prompts, adapter, keep)
            except ComputeFailed as error:
                return wire.error_response(str(error), unavailable=True)
            await self._delay()
            return wire.response([output])

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Tensors: hidden states, gradient of the output, then optional deep prompts.

        A ``keep`` id that names an earlier forward of this client lets the server reuse that forward's graph.
        """
        try:
            tensors, meta = wire.unpack(request)
            hidden, prompts, start, end = self._parse_batch(
                tensors, meta, "backward", ("hidden states", "output gradients")
            )
            adapter, keep = self._options(meta, context)
            grad_output = self.backend.check_hidden(tensors[1], "output gradients")
            if grad_output.shape != hidden.shape:
                raise BadRequest(
                    f"output gradients have shape {tuple(grad_output.shape)}, inputs {tuple(hidden.shape)}"
                )
        except BadRequest as error:
            return wire.error_response(str(error))
        if not self.accepting:
            return self._leaving()
        with self._in_flight():
            try:
                grads = await self._compute(
                    TRAINING, self.backend.backward, hidden, grad_output, start, end, prompts, adapter, keep
                )
            except ComputeFailed as error:
                return wire.error_response(str(error), unavailable=True)
            await self._delay()
            return wire.response(grads)

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
