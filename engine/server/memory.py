"""A hard limit on the attention-cache memory that all sessions of a server hold together."""

from __future__ import annotations

from engine.wire import BadRequest


class CacheBudget:
    """Counts cache bytes handed out to sessions; a session that does not fit is refused, never queued forever."""

    def __init__(self, capacity_bytes: int):
        if capacity_bytes <= 0:
            raise ValueError(f"cache budget must be positive, got {capacity_bytes} bytes")
        self.capacity = capacity_bytes
        self.used = 0

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def reserve(self, nbytes: int, what: str) -> None:
        if nbytes > self.free:
            raise BadRequest(
                f"{what} needs {format_bytes(nbytes)} of attention cache but only {format_bytes(self.free)} of "
                f"{format_bytes(self.capacity)} are free; try a shorter max length"
            )
        self.used += nbytes

    def release(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)


def format_bytes(nbytes: float) -> str:
    """1536 -> '1.5 KiB': small budgets (tests, tiny models) must not read as '0.0 MiB'."""
    for unit in ("B", "KiB", "MiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"
