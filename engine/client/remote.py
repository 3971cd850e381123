"""Forward and backward through the swarm as a torch module, so ``loss.backward()`` reaches the servers.

Servers keep their weights frozen and store no activations: the client remembers what it sent to each hop
and, on backward, sends it again with the output gradient; the server recomputes and returns the gradients of
its inputs (and of deep prompts). Batches are split into chunks within every server's request limit.
"""

from __future__ import annotations

import torch
from hivemind.p2p import PeerID
from torch import nn

from engine import wire
from engine.client.routing import Hop, make_route
from engine.client.swarm import SwarmConnection
from engine.server.handler import BlockServicer


class RemoteBlocks(nn.Module):
    """All blocks of a model, served by the swarm; input and output are (batch, tokens, hidden)."""

    def __init__(self, swarm: SwarmConnection, num_blocks: int, request_timeout: float = 120.0):
        super().__init__()
        self.swarm = swarm
        self.num_blocks = num_blocks
        self.request_timeout = request_timeout

    def forward(self, hidden: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """``prompts`` (blocks, batch, prefix, hidden), optional: deep prompts added at every block's input."""
        if prompts is None:
            prompts = torch.empty(0)  # autograd functions need tensors, not None
        return _RemoteFunction.apply(hidden, prompts, self)

    async def route(self) -> list[Hop]:
        return make_route(await self.swarm.read_blocks(0, self.num_blocks), 0, self.num_blocks)

    async def _call(self, hop: Hop, method: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        stub = BlockServicer.get_stub(self.swarm.p2p, PeerID.from_base58(hop.peer_id))
        message = wire.request(tensors, start=hop.start, end=hop.end)
        answer = await getattr(stub, method)(message, timeout=self.request_timeout)
        return wire.unpack_response(answer, hop.peer_id)[0]

    async def _chunked(
        self, hop: Hop, method: str, batch: list[torch.Tensor], prompts: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """Call ``method`` on ``hop`` for batch-sized tensors in chunks; returns outputs concatenated on batch."""
        rows, tokens = batch[0].shape[:2]
        bytes_per_row = sum(tensor[0].numel() * tensor.element_size() for tensor in batch) * 2  # answer alike
        per_chunk = min(hop.record.max_request_tokens // tokens, wire.MAX_MESSAGE_BYTES // bytes_per_row, rows)
        if per_chunk < 1:
            raise ValueError(
                f"one sequence of {tokens} tokens is larger than server {hop.peer_id[-8:]} accepts in one request; "
                "use shorter sequences"
            )
        results: list[list[torch.Tensor]] = []
        for first in range(0, rows, per_chunk):
            chunk = [tensor[first : first + per_chunk] for tensor in batch]
            if prompts is not None:
                chunk.append(prompts[hop.start : hop.end, first : first + per_chunk])
            results.append(await self._call(hop, method, chunk))
        # outputs are batch-first, except deep-prompt gradients: (blocks, batch, prefix, hidden)
        return [
            torch.cat(parts, dim=1 if index == 1 and prompts is not None else 0)
            for index, parts in enumerate(zip(*results, strict=True))
        ]

    async def run_forward(self, hidden: torch.Tensor, prompts: torch.Tensor | None):
        route = await self.route()
        inputs = []
        for hop in route:
            inputs.append(hidden)
            hidden = (await self._chunked(hop, "rpc_forward", [hidden], prompts))[0]
        return hidden, route, inputs

    async def run_backward(self, grad: torch.Tensor, route: list[Hop], inputs: list[torch.Tensor], prompts):
        grad_prompts = torch.zeros_like(prompts) if prompts is not None else None
        for hop, hidden in zip(reversed(route), reversed(inputs), strict=True):
            grads = await self._chunked(hop, "rpc_backward", [hidden, grad], prompts)
            grad = grads[0]
            if grad_prompts is not None:
                grad_prompts[hop.start : hop.end] += grads[1]
        return grad, grad_prompts


class _RemoteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, prompts: torch.Tensor, remote: RemoteBlocks) -> torch.Tensor:
        deep = prompts if prompts.numel() else None
        detached = hidden.detach().float()
        output, route, inputs = remote.swarm.run(remote.run_forward(detached, None if deep is None else deep.detach()))
        ctx.remote, ctx.route, ctx.inputs, ctx.deep = remote, route, inputs, deep is not None
        ctx.save_for_backward(prompts.detach())
        return output.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (prompts,) = ctx.saved_tensors
        deep = prompts if ctx.deep else None
        grad, grad_prompts = ctx.remote.swarm.run(
            ctx.remote.run_backward(grad_output.float(), ctx.route, ctx.inputs, deep)
        )
        return grad.to(grad_output.dtype), (grad_prompts if ctx.deep else None), None
