"""A simulated wide-area link in user space, for benchmarks: latency and bandwidth on every message a server
receives and sends (the kernel's netem is not always available, and needs privileges where it is).

Each direction is a queue of one wire: a message occupies it for ``bytes / bandwidth`` seconds after the previous
one has passed, then arrives ``latency`` seconds later. A received message is handed to the server only at its
arrival time; an answer leaves the server only when it would have arrived at the other end. Applied on the server,
it delays both directions of its clients' traffic, and the steps it pushes to other servers when it sends them (the
receiving server adds nothing to a push): with every server on the same settings, any two peers, client or server,
are one ``latency`` apart, as on a wide-area network where everyone is equally far. Set with
``nectar serve --link-latency SECONDS --link-mbps MBITS``; both 0 (the default) leave the link as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

Message = TypeVar("Message")


class LinkDirection:
    """One direction of the link: when a message sent now of ``nbytes`` arrives, and waiting for that."""

    def __init__(self, latency: float, bytes_per_second: float | None, clock: Callable[[], float] = time.monotonic):
        self.latency, self.bytes_per_second, self.clock = latency, bytes_per_second, clock
        self._free_at = 0.0  # when the wire has carried every message handed to it so far

    def arrival(self, nbytes: int) -> float:
        """The arrival time of a message of ``nbytes`` handed to the link now (and the wire is taken till then)."""
        start = max(self.clock(), self._free_at)
        if self.bytes_per_second:
            start += nbytes / self.bytes_per_second
        self._free_at = start
        return start + self.latency

    async def carry(self, nbytes: int) -> None:
        """Wait until a message of ``nbytes`` handed to the link now has arrived."""
        delay = self.arrival(nbytes) - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)


class SimulatedLink:
    """Both directions of a server's link; ``active`` is False when it adds nothing (no latency, no limit)."""

    def __init__(self, latency: float = 0.0, mbps: float = 0.0):
        if latency < 0 or mbps < 0:
            raise ValueError(
                f"a simulated link needs latency >= 0 and bandwidth >= 0, got {latency:g} s, {mbps:g} Mbit/s"
            )
        bytes_per_second = mbps * 1e6 / 8 if mbps > 0 else None
        self.active = latency > 0 or bytes_per_second is not None
        self.inbound = LinkDirection(latency, bytes_per_second)
        self.outbound = LinkDirection(latency, bytes_per_second)

    async def receive(self, message: object) -> None:
        """Wait until a protobuf ``message`` that reached the server now would have arrived over the link."""
        if self.active and message is not None:
            await self.inbound.carry(message.ByteSize())

    async def send(self, message: object) -> None:
        """Wait until a protobuf ``message`` the server sends now would have arrived at the other end."""
        if self.active and message is not None:
            await self.outbound.carry(message.ByteSize())

    def wrap(self, handler: Callable[[Message, object], Awaitable[object]]) -> Callable:
        """A unary handler whose request and answer both cross the link."""
        if not self.active:
            return handler

        async def linked(request: Message, context: object) -> object:
            await self.receive(request)
            answer = await handler(request, context)
            await self.send(answer)
            return answer

        return linked
