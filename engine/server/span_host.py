"""The span a server holds, its DHT records, and a move to another span without a gap in service.

A move (``SpanHost.move_to``):
1. announce the new span as joining (others count it at once and do not pick the same span), keep serving the old;
2. load the new span next to the old one (memory for both spans is needed for the duration of the load);
3. check again that every block it leaves has another settled server; if not, unload the new span and stay;
4. swap: new sessions and requests go to the new span, announced online; the blocks left are announced offline.
Sessions opened before the swap keep running on the old span (``BackendSwitch``) until they end; then its memory
is freed. The attention-cache budget is one object shared by both spans, so the limit holds across the swap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import torch
from hivemind.dht.node import DHTNode

from engine import records
from engine.balance import ServerPlacement
from engine.models.span import BlockSpan, SpanCache, load_span
from engine.records import ServerRecord, ServerState
from engine.server.backend import Session, SpanBackend
from engine.server.memory import CacheBudget
from engine.weights import ModelSource

logger = logging.getLogger(__name__)


class BackendSwitch:
    """Stands in for ``SpanBackend`` in the request handler, so the span behind it can change.

    A session stays with the backend that opened it (its cache belongs to that span); everything else (new
    sessions, forward, backward, limits) goes to the current backend.
    """

    def __init__(self, backend: SpanBackend):
        self.current = backend
        self._owners: dict[int, SpanBackend] = {}  # id(session) -> backend, for open sessions only

    def switch(self, backend: SpanBackend) -> None:
        self.current = backend

    def __getattr__(self, name: str):
        return getattr(self.current, name)

    @property
    def free_cache_tokens(self) -> int:
        return self.current.free_cache_tokens

    def open_session(self, *args: object, **kwargs: object) -> Session:
        backend = self.current
        session = backend.open_session(*args, **kwargs)
        self._owners[id(session)] = backend
        return session

    def _owner(self, session: Session) -> SpanBackend:
        return self._owners.get(id(session), self.current)

    def owner(self, session: Session) -> SpanBackend:
        """The backend that opened ``session`` (its batched steps run there, with that span's other sessions)."""
        return self._owner(session)

    def check_step(self, session: Session, hidden: torch.Tensor, position: object) -> tuple[torch.Tensor, int]:
        return self._owner(session).check_step(session, hidden, position)

    def inference_step(self, session: Session, hidden: torch.Tensor, position: int) -> torch.Tensor:
        return self._owner(session).inference_step(session, hidden, position)

    def close_session(self, session: Session) -> None:
        self._owners.pop(id(session), self.current).close_session(session)

    @property
    def open_sessions(self) -> int:
        return len(self._owners)


class SpanHost:
    """Loads this server's span, announces it, and moves it; ``start``/``end`` are the span being served.

    ``make_budget(bytes_per_token)`` builds the attention-cache budget once; ``make_backend(span, budget)`` the
    request backend of a loaded span (adapters and the like are the server's business); ``make_record(span,
    state)`` the DHT record of a span; ``state()`` the server's state.
    """

    def __init__(
        self,
        source: ModelSource,
        dtype: torch.dtype,
        device: str,
        span: tuple[int, int],
        make_budget: Callable[[int], CacheBudget],
        make_backend: Callable[[BlockSpan, CacheBudget], SpanBackend],
        make_record: Callable[[tuple[int, int], ServerState], ServerRecord],
        state: Callable[[], ServerState],
        node: DHTNode,
        prefix: str,
        record_ttl: float,
        quantization: str = "none",
    ):
        self.source, self.dtype, self.device = source, dtype, device
        self.quantization = quantization
        self.start, self.end = span
        self.make_budget = make_budget  # bytes per cached token of the span -> its attention-cache budget
        self.make_backend, self.make_record, self.state = make_backend, make_record, state
        self.node, self.prefix, self.record_ttl = node, prefix, record_ttl
        self.switch: BackendSwitch | None = None
        self.target: tuple[int, int] | None = None  # the span being loaded during a move
        self._announcing = asyncio.Lock()  # announcements go out whole and in order
        self._budget: CacheBudget | None = None

    def _load(self, start: int, end: int) -> SpanBackend:
        """Runs in a worker thread: read the span's weights and build its backend."""
        span = load_span(self.source, start, end, self.dtype, self.device, self.quantization)
        if self._budget is None:  # sized once: a move keeps the span's length, so the budget fits both spans
            per_token = SpanCache.bytes_per_token(end - start, span.family.kv_shape(span.config), self.dtype)
            self._budget = self.make_budget(per_token)
        return self.make_backend(span, self._budget)

    async def load(self) -> BackendSwitch:
        """Load the initial span (the server announces itself as joining meanwhile)."""
        self.switch = BackendSwitch(await asyncio.to_thread(self._load, self.start, self.end))
        return self.switch

    def current_placement(self) -> ServerPlacement | None:
        """This server as the balancing functions see it, or None while it cannot move (loading, moving, leaving)."""
        if self.switch is None or self.target is not None or self.state() != ServerState.ONLINE:
            return None
        record = self.make_record((self.start, self.end), ServerState.ONLINE)
        return ServerPlacement(record.peer_id, record.start, record.end, record.throughput)

    def announcements(self, state: ServerState | None = None) -> list[tuple[ServerRecord, list[int]]]:
        """(record, blocks) pairs to store: the served span, and during a move the new span's other blocks."""
        state = state or self.state()
        served = range(self.start, self.end)
        result = [(self.make_record((self.start, self.end), state), list(served))]
        if self.target is not None:
            target_state = ServerState.JOINING if state == ServerState.ONLINE else state
            target_blocks = [index for index in range(*self.target) if index not in served]
            result.append((self.make_record(self.target, target_state), target_blocks))
        return result

    async def announce(self, state: ServerState | None = None) -> None:
        async with self._announcing:
            for record, blocks in self.announcements(state):
                if blocks:
                    await records.announce(self.node, self.prefix, record, self.record_ttl, blocks)

    async def _withdraw(self, span: tuple[int, int], blocks: Sequence[int]) -> None:
        """Store ``offline`` on ``blocks`` for ``span``, so that clients and servers stop counting it there at once."""
        if blocks:
            async with self._announcing:
                record = self.make_record(span, ServerState.OFFLINE)
                await records.announce(self.node, self.prefix, record, self.record_ttl, blocks)

    async def move_to(self, new_start: int, can_leave: Callable[[list[int]], Awaitable[bool]]) -> bool:
        """Move to [new_start, new_start + length) without a gap; returns whether it moved.

        ``can_leave(blocks)`` is asked after the new span is loaded: False (a block would be uncovered) aborts.
        """
        if self.switch is None or self.target is not None:
            raise RuntimeError("the server can move only while it serves a loaded span and is not already moving")
        old = (self.start, self.end)
        new = (new_start, new_start + self.end - self.start)
        if not 0 <= new[0] < new[1] <= self.source.config.num_hidden_layers or new == old:
            raise ValueError(f"cannot move from blocks {old[0]}:{old[1]} to {new[0]}:{new[1]}")
        leaving = [index for index in range(*old) if not new[0] <= index < new[1]]
        self.target = new
        moved = False
        try:
            await self.announce()
            backend = await asyncio.to_thread(self._load, *new)
            if not await can_leave(leaving):
                logger.info("staying on blocks %d:%d: leaving them now would uncover a block", *old)
                return False
            self.switch.switch(backend)
            self.start, self.end = new
            self.target = None
            moved = True
            await self.announce()
            await self._withdraw(old, leaving)
            logger.info("now serving blocks %d:%d (was %d:%d)", *new, *old)
            return True
        finally:
            # On shutdown (cancelled) the target stays, so the leaving announcement covers its blocks too.
            if not moved and self.target is not None and not asyncio.current_task().cancelling():
                self.target = None
                await self._withdraw(new, [index for index in range(*new) if not old[0] <= index < old[1]])
