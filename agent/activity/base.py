"""The idle-time interface every platform source implements, and the null source that knows nothing."""

from __future__ import annotations

from typing import Protocol


class IdleSource(Protocol):
    name: str

    def seconds_since_input(self) -> float | None:
        """Seconds since the last keyboard or mouse input; None when it cannot tell (never raises)."""
        ...

    def close(self) -> None: ...


class NullIdle:
    """No source works here (a headless server, an unsupported desktop): idle time is unknown."""

    name = "none"

    def seconds_since_input(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class SourceUnavailable(Exception):
    """A source cannot work on this machine (raised only while opening it, never while polling)."""
