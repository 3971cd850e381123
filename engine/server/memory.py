"""A hard limit on the attention-cache memory that all sessions of a server hold together, and each client's share."""

from __future__ import annotations

from collections import Counter

from engine.wire import BadRequest


class CacheBudget:
    """Counts cache bytes handed out to sessions; a session that does not fit is refused, never queued forever.

    ``peer_share`` (0-1] caps what one client (by peer id) may hold, so one client cannot take the whole cache.
    """

    def __init__(self, capacity_bytes: int, peer_share: float = 1.0):
        if capacity_bytes <= 0:
            raise ValueError(f"cache budget must be positive, got {capacity_bytes} bytes")
        if not 0 < peer_share <= 1:
            raise ValueError(f"a client's share of the cache must be in (0, 1], got {peer_share}")
        self.capacity = capacity_bytes
        self.peer_capacity = int(capacity_bytes * peer_share)
        self.used = 0
        self._by_peer: Counter[str] = Counter()

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def reserve(self, nbytes: int, what: str, peer: str = "") -> None:
        if nbytes > self.free:
            raise BadRequest(
                f"{what} needs {format_bytes(nbytes)} of attention cache but only {format_bytes(self.free)} of "
                f"{format_bytes(self.capacity)} are free; try a shorter max length"
            )
        held = self._by_peer[peer]
        if peer and held + nbytes > self.peer_capacity:
            raise BadRequest(
                f"{what} needs {format_bytes(nbytes)} of attention cache; this client already holds "
                f"{format_bytes(held)} of the {format_bytes(self.peer_capacity)} one client may hold"
            )
        self.used += nbytes
        self._by_peer[peer] += nbytes

    def release(self, nbytes: int, peer: str = "") -> None:
        self.used = max(0, self.used - nbytes)
        left = self._by_peer[peer] - nbytes
        if left > 0:
            self._by_peer[peer] = left
        else:
            del self._by_peer[peer]


def format_bytes(nbytes: float) -> str:
    """1536 -> '1.5 KiB': small budgets (tests, tiny models) must not read as '0.0 MiB'."""
    for unit in ("B", "KiB", "MiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"
