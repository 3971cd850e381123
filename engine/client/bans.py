"""Servers that failed recently, avoided for a while that doubles with each failure in a row."""

from __future__ import annotations

import time
from collections.abc import Callable


class BanList:
    """Per-peer bans with exponential backoff; a peer that served well again starts from ``base`` next time.

    Only the swarm loop touches it, so it needs no lock. ``clock`` is injectable for tests.
    """

    def __init__(self, base: float, maximum: float, clock: Callable[[], float] = time.monotonic):
        self.base, self.maximum, self.clock = base, maximum, clock
        self._until: dict[str, float] = {}
        self._strikes: dict[str, int] = {}

    def ban(self, peer: str) -> float:
        """Ban ``peer`` after a failure; returns the ban's length in seconds."""
        strikes = self._strikes.get(peer, 0) + 1
        self._strikes[peer] = strikes
        duration = min(self.base * 2 ** (strikes - 1), self.maximum)
        self._until[peer] = self.clock() + duration
        return duration

    def forgive(self, peer: str) -> None:
        """``peer`` served a request: its next failure is banned for ``base`` again (the ban itself stays)."""
        self._strikes.pop(peer, None)

    def is_banned(self, peer: str) -> bool:
        until = self._until.get(peer)
        return until is not None and until > self.clock()

    def banned(self) -> set[str]:
        now = self.clock()
        expired = [peer for peer, until in self._until.items() if until <= now]
        for peer in expired:
            del self._until[peer]
        return set(self._until)

    def strikes(self, peer: str) -> int:
        return self._strikes.get(peer, 0)
