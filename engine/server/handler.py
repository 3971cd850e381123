"""The server's RPCs over hivemind P2P: an inference stream, forward, backward and info.

Every handler turns a bad request into a one-line error response (``wire.error_response``) and keeps serving;
only the request that broke a rule fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import AsyncIterator  # noqa: UP035 (hivemind detects streams by typing's alias, not collections.abc's)

from hivemind.p2p import P2PContext, ServicerBase
from hivemind.proto import runtime_pb2

from engine import wire
from engine.server.backend import SpanBackend
from engine.server.executor import INFERENCE, TRAINING, PriorityExecutor
from engine.wire import BadRequest

logger = logging.getLogger(__name__)


class BlockServicer(ServicerBase):
    """RPC endpoints of one server; ``info`` returns what ``describe`` gives."""

    def __init__(
        self,
        backend: SpanBackend,
        executor: PriorityExecutor,
        describe: Callable[[], dict],
        step_timeout: float = 300.0,
    ):
        self.backend = backend
        self.executor = executor
        self.describe = describe
        self.step_timeout = step_timeout  # a silent client's session is closed after this many seconds
        self.accepting = True  # False while draining: running sessions finish, new ones are refused
        self.active_sessions = 0

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        return wire.response(**self.describe())

    async def rpc_inference(
        self, requests: AsyncIterator[runtime_pb2.ExpertRequest], context: P2PContext
    ) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        """First message opens a session (start, end, batch_size, max_length); each later one is a step."""
        session = None
        try:
            first = await asyncio.wait_for(anext(requests), self.step_timeout)
            if not self.accepting:
                raise BadRequest("server is leaving the swarm and takes no new sessions")
            _, meta = wire.unpack(first)
            session = self.backend.open_session(
                meta.get("start"), meta.get("end"), meta.get("batch_size", 1), meta.get("max_length")
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
                output = await self.executor.submit(INFERENCE, self.backend.inference_step, session, hidden, position)
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
        try:
            hidden, prompts, start, end = self._parse_batch(request, expected=(1, 2))
        except BadRequest as error:
            return wire.error_response(str(error))
        output = await self.executor.submit(TRAINING, self.backend.forward, hidden, start, end, prompts)
        return wire.response([output])

    async def rpc_backward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        """Tensors: hidden states, gradient of the output, then optional deep prompts."""
        try:
            tensors, meta = wire.unpack(request)
            if len(tensors) not in (2, 3):
                raise BadRequest(
                    f"backward takes hidden states, output gradients and optional prompts, got {len(tensors)}"
                )
            hidden, prompts, start, end = self._parse_batch(request, expected=(2, 3), tensors=tensors, meta=meta)
            grad_output = self.backend.check_hidden(tensors[1], "output gradients")
            if grad_output.shape != hidden.shape:
                raise BadRequest(
                    f"output gradients have shape {tuple(grad_output.shape)}, inputs {tuple(hidden.shape)}"
                )
        except BadRequest as error:
            return wire.error_response(str(error))
        grads = await self.executor.submit(TRAINING, self.backend.backward, hidden, grad_output, start, end, prompts)
        return wire.response(grads)

    def _parse_batch(self, request, expected: tuple[int, int], tensors=None, meta=None):
        if tensors is None:
            tensors, meta = wire.unpack(request)
        if len(tensors) not in expected:
            raise BadRequest(f"request must carry {' or '.join(map(str, expected))} tensors, got {len(tensors)}")
        start, end = self.backend.check_range(meta.get("start"), meta.get("end"))
        hidden = self.backend.check_batch(tensors[0])
        prompts = tensors[-1] if len(tensors) == expected[1] else None
        return hidden, self.backend.check_prompts(prompts, hidden, start, end), start, end
