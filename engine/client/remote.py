"""Forward and backward through the swarm as a torch module, so ``loss.backward()`` reaches the servers.

Servers keep their weights frozen: the client remembers what it sent to each hop and, on backward, sends it
again with the output gradient; the server returns the gradients of its inputs (and of deep prompts), from the
graph it kept since the forward or by recomputing the forward. Batches are split into chunks within every
server's request limit and the message limit (deep prompts and their gradients counted). Hidden states go to a
16-bit server in its dtype; every answer is checked (shape, dtype, finite) before it is used.

A hop whose server fails (connection lost, timeout, leaving) is recomputed elsewhere: in forward, the failed
blocks get a new chain fed the same input; in backward, the new chain's inner inputs are first recomputed by a
forward pass, then the gradient flows back through it. Servers compute the same function, so the result is the
same as without the failure.

Spot-checks (``spot_check.py``): the first request a server gets from this client, and then a fraction of requests,
are also computed on another route over the same blocks, side by side; when they differ a third route decides, the
liar is banned and the honest route's outputs (or gradients) are used.

Requests may name a LoRA adapter (only servers that announce it are used) and, when a backward will follow, a
``keep`` id: the server then keeps that forward's graph for the backward (``engine/server/activations.py``); a
server without it (a replacement, or after evicting it) recomputes, with the same result.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from engine import wire
from engine.client.answers import BadAnswer, check_answer, wire_dtype
from engine.client.router import RetryBudget, describe_error, is_server_fault
from engine.client.routing import Hop, MissingBlocksError
from engine.client.spot_check import lie
from engine.client.swarm import SwarmConnection


@dataclass(frozen=True)
class RequestOptions:
    """What every request of one forward/backward carries besides tensors: the adapter and the keep id."""

    adapter: str | None = None
    keep: str | None = None  # set when a backward will follow; chunks add their blocks and rows to it

    def metadata(self, hop: Hop, first_row: int) -> dict:
        meta: dict = {} if self.adapter is None else {"adapter": self.adapter}
        if self.keep is not None:
            meta["keep"] = f"{self.keep}.{hop.start}.{hop.end}.{first_row}"
        return meta


BASE = RequestOptions()
MESSAGE_OVERHEAD_BYTES = 2**16  # room in a message for its framing, tensor headers and metadata


class RemoteBlocks(nn.Module):
    """All blocks of a model, served by the swarm; input and output are (batch, tokens, hidden)."""

    def __init__(
        self,
        swarm: SwarmConnection,
        num_blocks: int,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ):
        super().__init__()
        self.swarm = swarm
        self.router = swarm.router
        self.num_blocks = num_blocks
        self.request_timeout = swarm.settings.request_timeout if request_timeout is None else request_timeout
        self.max_retries = swarm.settings.max_retries if max_retries is None else max_retries
        self.last_route: list[Hop] = []  # the chain of the latest forward, after any replacements (diagnostics)

    def forward(
        self, hidden: torch.Tensor, prompts: torch.Tensor | None = None, adapter: str | None = None
    ) -> torch.Tensor:
        """``prompts`` (blocks, batch, prefix, hidden), optional: deep prompts added at every block's input.

        ``adapter`` names a LoRA adapter for the servers to apply (None: the base model).
        """
        if prompts is None:
            prompts = torch.empty(0)  # autograd functions need tensors, not None
        backward_follows = torch.is_grad_enabled() and (hidden.requires_grad or prompts.requires_grad)
        options = RequestOptions(adapter, uuid.uuid4().hex if backward_follows else None)
        return _RemoteFunction.apply(hidden, prompts, self, options)

    async def route(self, options: RequestOptions = BASE) -> list[Hop]:
        return await self.router.training_chain(0, self.num_blocks, adapter=options.adapter)

    async def _call(
        self,
        hop: Hop,
        protocol: str,
        tensors: list[torch.Tensor],
        expected: list[torch.Size],
        metadata: dict | None = None,
    ) -> list[torch.Tensor]:
        """One request to ``hop``; its answers checked against the ``expected`` shapes and returned in float32."""
        message = wire.request(tensors, start=hop.start, end=hop.end, **(metadata or {}))
        answer = await wire.call(self.swarm.p2p, hop.peer_id, protocol, message, self.request_timeout)
        try:
            outputs = wire.unpack_response(answer, hop.peer_id)[0]
        except wire.BadRequest as error:  # garbage from the server is the server's fault: try another one
            raise BadAnswer(f"server {hop.peer_id[-8:]} sent a malformed answer: {error}") from None
        if len(outputs) != len(expected):
            raise BadAnswer(f"server {hop.peer_id[-8:]} answered {len(outputs)} tensors instead of {len(expected)}")
        what = "a forward" if protocol == wire.FORWARD_PROTOCOL else "a backward"
        return [
            check_answer(out, shape, hop.record, what).float() for out, shape in zip(outputs, expected, strict=True)
        ]

    async def _chunked(
        self,
        hop: Hop,
        protocol: str,
        batch: list[torch.Tensor],
        prompts: torch.Tensor | None,
        options: RequestOptions = BASE,
    ) -> list[torch.Tensor]:
        """Call ``protocol`` on ``hop`` for batch-sized tensors in chunks; returns outputs concatenated on batch.

        ``batch`` is the hidden states (sent in the server's dtype when it is 16-bit) and, for a backward, the output
        gradients (always float32: the server scales them before its own dtype). A backward answers the input
        gradients and, with deep prompts, the prompts' gradients.
        """
        rows, tokens = batch[0].shape[:2]
        dtype = wire_dtype(hop.record)
        batch = [batch[0].to(dtype), *batch[1:]]
        hop_prompts = None if prompts is None else prompts[hop.start : hop.end].to(dtype)
        per_chunk = min(hop.record.max_request_tokens // tokens, self._rows_per_message(batch, hop_prompts), rows)
        if per_chunk < 1:
            raise ValueError(
                f"one sequence of {tokens} tokens is larger than server {hop.peer_id[-8:]} accepts in one request; "
                "use shorter sequences"
            )
        backward = protocol == wire.BACKWARD_PROTOCOL
        results: list[list[torch.Tensor]] = []
        began = time.perf_counter()
        for first in range(0, rows, per_chunk):
            chunk = [tensor[first : first + per_chunk] for tensor in batch]
            expected = [chunk[0].shape]
            if hop_prompts is not None:
                chunk.append(hop_prompts[:, first : first + per_chunk])
                if backward:
                    expected.append(chunk[-1].shape)
            results.append(await self._call(hop, protocol, chunk, expected, options.metadata(hop, first)))
        if not backward:  # what the server delivered, which routing believes over what it announces
            self.router.speeds.observe(hop.record, rows * tokens, hop.end - hop.start, time.perf_counter() - began)
        # outputs are batch-first, except deep-prompt gradients: (blocks, batch, prefix, hidden)
        return [
            torch.cat(parts, dim=1 if index == 1 and prompts is not None else 0)
            for index, parts in enumerate(zip(*results, strict=True))
        ]

    @staticmethod
    def _rows_per_message(batch: list[torch.Tensor], prompts: torch.Tensor | None) -> int:
        """Batch rows whose request, and whose answer, fit one message: every tensor of a row counts, deep prompts
        and (in a backward's answer) their gradients included, each at float32 size (the largest either side sends).
        A request carries at least what its answer does (inputs and prompts in, their gradients or outputs out)."""
        row = sum(tensor[0].numel() for tensor in batch)
        if prompts is not None:
            row += prompts[:, 0].numel()
        return (wire.MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES) // (row * 4)

    async def _failed(
        self, hop: Hop, error: Exception, budget: RetryBudget, options: RequestOptions = BASE
    ) -> list[Hop]:
        """Handle a failed call (``Router.recover``), then route around the failed server."""
        self.router.recover(hop, error, budget)
        return await self.router.training_chain(hop.start, hop.end, adapter=options.adapter)

    async def _forward_route(
        self,
        route: list[Hop],
        hidden: torch.Tensor,
        prompts: torch.Tensor | None,
        budget: RetryBudget,
        options: RequestOptions = BASE,
        check: bool = True,
    ) -> tuple[torch.Tensor, list[Hop], list[torch.Tensor]]:
        """Run ``hidden`` through ``route``, replacing failed hops; returns the output, final route and hop inputs.

        With ``check``, hops due for a spot-check are compared with another route over their blocks; a hop whose
        server lied is replaced by that route (its output and inner inputs are the honest ones).
        """
        route, inputs, index = list(route), [], 0
        while index < len(route):
            hop = route[index]
            try:
                main = self._chunked(hop, wire.FORWARD_PROTOCOL, [hidden], prompts, options)
                if check and self.router.spot.due(hop):
                    answer, honest = await self._checked(
                        hop, main, self._second_forward(hidden, prompts, options), options.adapter
                    )
                else:
                    answer, honest = await main, None
            except Exception as error:
                route[index : index + 1] = await self._failed(hop, error, budget, options)
                continue
            if honest is not None:  # the hop's server lied: take the honest route's work instead
                self.router.recover(hop, lie(hop), budget)
                honest_route, honest_inputs = honest
                route[index : index + 1] = honest_route
                inputs.extend(honest_inputs)
                hidden = answer[0]
                index += len(honest_route)
                continue
            self.router.served(hop.peer_id)
            inputs.append(hidden)
            hidden = answer[0]
            index += 1
        return hidden, route, inputs

    # --- spot-checks (engine/client/spot_check.py) ---------------------------------------------------------------

    async def _checked(
        self,
        hop: Hop,
        main: Awaitable[list[torch.Tensor]],
        second: Callable[[list[Hop]], Awaitable[tuple[list[torch.Tensor], Any]]],
        adapter: str | None,
    ) -> tuple[list[torch.Tensor], Any]:
        """``main`` (``hop``'s answer) beside ``second`` (the same work on another route over its blocks).

        Returns ``main``'s answer and None; or, when a third route showed ``hop``'s server lied, the honest answer and
        what ``second`` returned with it (the caller bans the liar). Liars among the other routes are banned here.
        """
        spot = self.router.spot
        what = f"blocks {hop.start}:{hop.end} on server {hop.peer_id[-8:]}"

        async def opinion(avoid: list[str]) -> tuple[list[Hop], list[torch.Tensor], Any] | None:
            route = await self.router.second_route(hop, avoid, adapter)
            if route is None:
                spot.unverified(hop, "no other server holds these blocks", lonely=not avoid)
                return None
            try:
                return route, *(await second(route))
            except Exception as error:
                if not (is_server_fault(error) or isinstance(error, MissingBlocksError | wire.RemoteError)):
                    raise
                spot.unverified(hop, f"the second server failed: {describe_error(error)}")
                return None

        began = time.perf_counter()
        answer, other = await asyncio.gather(main, opinion([]), return_exceptions=True)
        spot.stats.seconds += time.perf_counter() - began
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(other, BaseException):
            raise other
        if other is None:
            return answer, None
        third: list[tuple[list[Hop], list[torch.Tensor], Any]] = []

        async def third_opinion() -> list[torch.Tensor] | None:
            found = await opinion([hop.peer_id, *(h.peer_id for h in other[0])])
            if found is None:
                return None
            third.append(found)
            return found[1]

        verdict = await spot.settle(answer, other[1], third_opinion, what)
        peers = [h.peer_id for h in other[0]]
        liars = spot.judged(verdict, hop.peer_id, peers, [h.peer_id for h in third[0][0]] if third else [])
        for second_hop in other[0]:
            if second_hop.peer_id in liars:
                self.router.failed(second_hop, lie(second_hop))
        if hop.peer_id in liars:
            return other[1], other[2]
        return answer, None

    def _second_forward(
        self, hidden: torch.Tensor, prompts: torch.Tensor | None, options: RequestOptions
    ) -> Callable[[list[Hop]], Awaitable[tuple[list[torch.Tensor], Any]]]:
        """A forward of ``hidden`` through a second route, unchecked, giving up at its first failure (a ban)."""
        unkept = replace(options, keep=None)  # a second opinion is not kept for a backward

        async def run(route: list[Hop]) -> tuple[list[torch.Tensor], Any]:
            output, route, inputs = await self._forward_route(route, hidden, prompts, RetryBudget(0), unkept, False)
            return [output], (route, inputs)

        return run

    def _second_backward(
        self,
        hop: Hop,
        hidden: torch.Tensor,
        grad: torch.Tensor,
        prompts: torch.Tensor | None,
        options: RequestOptions,
    ) -> Callable[[list[Hop]], Awaitable[tuple[list[torch.Tensor], Any]]]:
        """A backward of ``hop``'s blocks through a second route, unchecked, giving up at its first failure."""
        unkept = replace(options, keep=None)  # no forward was kept for it: its servers recompute

        async def run(route: list[Hop]) -> tuple[list[torch.Tensor], Any]:
            scratch = None if prompts is None else torch.zeros_like(prompts)
            grad_input = await self._backward_route(
                route, hidden, grad, prompts, scratch, RetryBudget(0), unkept, False
            )
            return [grad_input] + ([] if scratch is None else [scratch[hop.start : hop.end]]), True  # True: it lied

        return run

    async def _backward_hop(
        self,
        hop: Hop,
        hidden: torch.Tensor,
        grad: torch.Tensor,
        prompts: torch.Tensor | None,
        grad_prompts: torch.Tensor | None,
        budget: RetryBudget,
        options: RequestOptions = BASE,
        check: bool = True,
    ) -> torch.Tensor:
        """Gradient of ``hop``'s input; if its server fails, the blocks are recomputed on a new chain.

        With ``check``, a hop due for a spot-check is compared with another route over its blocks; if its server
        lied, the honest route's gradients are used.
        """
        try:
            main = self._chunked(hop, wire.BACKWARD_PROTOCOL, [hidden, grad], prompts, options)
            if check and self.router.spot.due(hop):
                grads, lied = await self._checked(
                    hop, main, self._second_backward(hop, hidden, grad, prompts, options), options.adapter
                )
            else:
                grads, lied = await main, None
        except Exception as error:
            route = await self._failed(hop, error, budget, options)
            return await self._backward_route(route, hidden, grad, prompts, grad_prompts, budget, options, check)
        if lied:
            self.router.recover(hop, lie(hop), budget)
        else:
            self.router.served(hop.peer_id)
        if grad_prompts is not None:
            grad_prompts[hop.start : hop.end] += grads[1]
        return grads[0]

    async def _backward_route(
        self,
        route: list[Hop],
        hidden: torch.Tensor,
        grad: torch.Tensor,
        prompts: torch.Tensor | None,
        grad_prompts: torch.Tensor | None,
        budget: RetryBudget,
        options: RequestOptions = BASE,
        check: bool = True,
    ) -> torch.Tensor:
        """Gradient of the input of ``route`` (a chain whose first input is ``hidden``) for output gradient ``grad``."""
        inputs = [hidden]
        if len(route) > 1:  # the inputs of the chain's inner hops are not known yet: recompute them
            last_input, head, inner = await self._forward_route(route[:-1], hidden, prompts, budget, options, check)
            route, inputs = [*head, route[-1]], [*inner, last_input]
        for sub_hop, sub_hidden in zip(reversed(route), reversed(inputs), strict=True):
            grad = await self._backward_hop(sub_hop, sub_hidden, grad, prompts, grad_prompts, budget, options, check)
        return grad

    async def run_forward(self, hidden: torch.Tensor, prompts: torch.Tensor | None, options: RequestOptions = BASE):
        budget = RetryBudget(self.max_retries)
        route = await self.route(options)
        output, route, inputs = await self._forward_route(route, hidden, prompts, budget, options)
        self.last_route = route
        return output, route, inputs

    async def run_backward(
        self, grad: torch.Tensor, route: list[Hop], inputs: list[torch.Tensor], prompts, options: RequestOptions = BASE
    ):
        budget = RetryBudget(self.max_retries)
        grad_prompts = torch.zeros_like(prompts) if prompts is not None else None
        for hop, hidden in zip(reversed(route), reversed(inputs), strict=True):
            grad = await self._backward_hop(hop, hidden, grad, prompts, grad_prompts, budget, options)
        return grad, grad_prompts


class _RemoteFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, prompts: torch.Tensor, remote: RemoteBlocks, options: RequestOptions
    ) -> torch.Tensor:
        deep = prompts if prompts.numel() else None
        detached = hidden.detach().float()
        deep_detached = None if deep is None else deep.detach()
        output, route, inputs = remote.swarm.run(remote.run_forward(detached, deep_detached, options))
        ctx.remote, ctx.route, ctx.inputs, ctx.deep, ctx.options = remote, route, inputs, deep is not None, options
        ctx.save_for_backward(prompts.detach())
        return output.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (prompts,) = ctx.saved_tensors
        deep = prompts if ctx.deep else None
        grad, grad_prompts = ctx.remote.swarm.run(
            ctx.remote.run_backward(grad_output.float(), ctx.route, ctx.inputs, deep, ctx.options)
        )
        return grad.to(grad_output.dtype), (grad_prompts if ctx.deep else None), None, None
