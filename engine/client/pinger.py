"""Round trips to servers, measured by pinging in the background and smoothed, for latency-aware routing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from hivemind.p2p import P2P

from engine import wire

logger = logging.getLogger(__name__)


class Pinger:
    """Keeps a smoothed round-trip time per server; lives on the swarm loop, like everything that touches P2P.

    A failure (a ping that fails or times out, or a request that failed) sets the estimate to ``timeout``, so a
    dead or hanging server looks slow to routing, also after its ban ends, instead of vanishing from it (bans, not
    pings, decide that a server is out); its next answered ping sets the estimate anew instead of averaging.
    """

    def __init__(self, p2p: P2P, period: float, timeout: float, smoothing: float):
        self.p2p, self.period, self.timeout, self.smoothing = p2p, period, timeout, smoothing
        self.rtt: dict[str, float] = {}
        self.measured_at: dict[str, float] = {}  # time.monotonic() of each peer's latest sample
        self._down: set[str] = set()  # peers whose latest sample was a failure
        self.peers: set[str] = set()  # servers to keep measuring: those seen in the latest DHT views
        # Added to measured round trips of a peer; simulates a slow link in tests and benchmarks, 0 otherwise.
        self.extra_latency: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    def estimate(self, peer: str) -> float | None:
        """Smoothed round trip in seconds (plus any simulated latency), or None if never measured."""
        rtt = self.rtt.get(peer)
        return None if rtt is None else rtt + self.extra_latency.get(peer, 0.0)

    def estimates(self) -> dict[str, float]:
        return {peer: rtt + self.extra_latency.get(peer, 0.0) for peer, rtt in self.rtt.items()}

    def record(self, peer: str, sample: float) -> float:
        """Fold one measurement into the peer's smoothed round trip (exponential moving average)."""
        old = None if peer in self._down else self.rtt.get(peer)
        self._down.discard(peer)
        self.rtt[peer] = sample if old is None else (1 - self.smoothing) * old + self.smoothing * sample
        self.measured_at[peer] = time.monotonic()
        return self.rtt[peer]

    def record_failure(self, peer: str) -> None:
        """The peer did not answer (a ping, or a request): it counts as ``timeout`` until it answers again."""
        self.rtt[peer] = self.timeout
        self._down.add(peer)
        self.measured_at[peer] = time.monotonic()

    async def ping(self, peer: str) -> float | None:
        """One ping; returns the measured round trip, or None if the server did not answer in time."""
        began = time.perf_counter()
        try:
            wire.unpack_response(
                await wire.call(self.p2p, peer, wire.PING_PROTOCOL, wire.request(), self.timeout), peer
            )
        except Exception as error:  # any failure to answer is what we measure, not a reason to stop
            logger.debug("ping to %s failed: %s", peer[-8:], error)
            self.record_failure(peer)
            return None
        sample = time.perf_counter() - began
        self.record(peer, sample)
        return sample

    async def ping_all(self, peers: Iterable[str]) -> None:
        await asyncio.gather(*(self.ping(peer) for peer in set(peers)))

    async def measure_unknown(self, peers: Iterable[str]) -> None:
        """Ping the peers without a measurement yet (before routing through them for the first time)."""
        unknown = [peer for peer in set(peers) if peer not in self.rtt]
        if unknown:
            await self.ping_all(unknown)

    def start(self) -> None:
        """Start refreshing in the background (idempotent); call on the swarm loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="nectar-pinger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            await self.ping_all(self.peers)
