"""What one client, and all clients together, may hold on a server at once: sessions and queued compute jobs.

The attention-cache share per client is the cache budget's (``memory.CacheBudget``); the request sizes are the
backend's (``max_request_tokens``, ``max_session_length``); message sizes are the wire's. Everything is refused
with a one-line reason before anything is allocated, and the rest of the server goes on serving.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from engine.wire import MAX_MESSAGE_BYTES, BadRequest


class TooBusy(BadRequest):
    """The server holds as much work as it takes: another server may take the request (answered as unavailable)."""


@dataclass(frozen=True)
class RequestLimits:
    """Per-client and total limits of one server (from ``ServerSettings``)."""

    max_sessions: int = 256  # open inference sessions of all clients together
    max_sessions_per_peer: int = 16  # open inference sessions of one client
    max_jobs_per_peer: int = 16  # compute jobs (steps, forwards, backwards) of one client queued or running
    max_queued_bytes: int = 512 * 2**20  # request tensors held by all queued or running jobs together
    max_message_bytes: int = MAX_MESSAGE_BYTES  # one message of an inference stream
    session_idle_timeout: float = 300.0  # seconds a session may wait for its next step before it is closed

    def __post_init__(self) -> None:
        names = ("max_sessions", "max_sessions_per_peer", "max_jobs_per_peer", "max_queued_bytes", "max_message_bytes")
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.session_idle_timeout > 0:
            raise ValueError(f"--session-idle-timeout must be positive, got {self.session_idle_timeout}")


class Admission:
    """Counts sessions and jobs per client; ``session(peer)`` and ``job(peer)`` hold a slot or refuse at once."""

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self.sessions: Counter[str] = Counter()
        self.jobs: Counter[str] = Counter()
        self.queued_bytes = 0

    @property
    def open_sessions(self) -> int:
        return sum(self.sessions.values())

    @contextlib.contextmanager
    def session(self, peer: str) -> Iterator[None]:
        if self.open_sessions >= self.limits.max_sessions:
            raise TooBusy(f"server holds its maximum of {self.limits.max_sessions} sessions; try another server")
        if self.sessions[peer] >= self.limits.max_sessions_per_peer:
            raise BadRequest(
                f"this client already holds {self.sessions[peer]} sessions here, the most one client may open; "
                "close some first"
            )
        with _held(self.sessions, peer):
            yield

    @contextlib.contextmanager
    def job(self, peer: str, nbytes: int = 0) -> Iterator[None]:
        """A compute job of ``peer`` whose request tensors take ``nbytes``, held until it is answered."""
        if self.jobs[peer] >= self.limits.max_jobs_per_peer:
            raise TooBusy(
                f"this client already has {self.jobs[peer]} requests queued or running here, the most one client "
                "may have; wait for their answers"
            )
        if self.queued_bytes and self.queued_bytes + nbytes > self.limits.max_queued_bytes:
            raise TooBusy(
                f"server is busy: queued requests hold {self.queued_bytes / 2**20:.0f} MiB, its limit is "
                f"{self.limits.max_queued_bytes / 2**20:.0f} MiB; try another server"
            )
        self.queued_bytes += nbytes
        try:
            with _held(self.jobs, peer):
                yield
        finally:
            self.queued_bytes -= nbytes


@contextlib.contextmanager
def _held(counter: Counter[str], key: str) -> Iterator[None]:
    counter[key] += 1
    try:
        yield
    finally:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]
