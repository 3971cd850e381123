"""A second chain over one hop's blocks, with its own attention caches, that spot-checks an inference session's hop.

A verifier server needs the same cache history as the server it checks. Opening a session and replaying the hop's
whole history at every check would cost a full prefix each time; a ``ShadowChain`` instead stays open between checks
and, at each check, catches up with the inputs the hop received since the last one (merged into as few messages as
fit, ``merge_steps``), so a check costs the steps it missed, computed in one batch beside the hop's own step. A new
server's first check carries the whole prefix (the prompt) at once.
"""

from __future__ import annotations

import asyncio

import torch
from hivemind.p2p import P2P

from engine.client.routing import Hop
from engine.client.stream import History, InferenceStream, merge_steps


class ShadowChain:
    """Open inference streams over a route that covers exactly one hop's blocks, ``done`` of its steps computed."""

    def __init__(self, streams: list[InferenceStream]):
        self.streams = streams
        self.done = 0  # how many entries of the hop's history this chain has computed

    @property
    def peers(self) -> list[str]:
        return [stream.hop.peer_id for stream in self.streams]

    @property
    def expiring(self) -> bool:
        return any(stream.expiring for stream in self.streams)

    @classmethod
    async def open(
        cls,
        p2p: P2P,
        route: list[Hop],
        batch_size: int,
        max_length: int,
        timeout: float,
        adapter: str | None,
        prompts: torch.Tensor | None,
    ) -> ShadowChain:
        """Open a session on every server of ``route``; raises the first failure (after closing the others)."""
        opened = await asyncio.gather(
            *(InferenceStream.open(p2p, hop, batch_size, max_length, timeout, adapter, prompts) for hop in route),
            return_exceptions=True,
        )
        streams = [stream for stream in opened if isinstance(stream, InferenceStream)]
        if len(streams) < len(opened):
            for stream in streams:
                stream.abort()
            raise next(error for error in opened if isinstance(error, BaseException))
        return cls(streams)

    async def catch_up(self, history: History, position: int, hidden: torch.Tensor, timeout: float) -> torch.Tensor:
        """Compute the hop's steps this chain missed, then ``hidden`` at ``position``; returns the latter's output.

        ``history`` is the hop's inputs before this step. A failure raises with the failing stream's ``hop`` attached
        as ``error.shadow_hop``, so the caller can blame the right server.
        """
        inputs = merge_steps([*history[self.done :], (position, hidden)])
        for stream in self.streams:
            try:
                outputs = await stream.replay(inputs, timeout)
            except Exception as error:
                error.shadow_hop = stream.hop  # type: ignore[attr-defined]
                raise
            inputs = [(start, output) for (start, _), output in zip(inputs, outputs, strict=True)]
        self.done = len(history) + 1
        return inputs[-1][1][:, -hidden.shape[1] :]

    async def close(self) -> None:
        await asyncio.gather(*(stream.close() for stream in self.streams))

    def abort(self) -> None:
        for stream in self.streams:
            stream.abort()
