"""Moving a server's span without a gap: what is announced in which order, and sessions across the swap.

The DHT is replaced by a recorder of ``store_many`` calls: these tests check the order of announcements and the
backends, not the transport (test_auto_span.py runs real processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.models.span import load_span
from engine.records import ServerRecord, ServerState
from engine.server.backend import SpanBackend
from engine.server.memory import CacheBudget
from engine.server.span_host import SpanHost
from engine.weights import resolve_model
from engine.wire import BadRequest


class RecordingNode:
    """Stands in for a DHTNode: remembers (state, span, blocks) of every announcement."""

    def __init__(self):
        self.stored: list[tuple[str, tuple[int, int], list[int]]] = []

    async def store_many(self, keys, values, expiration_time, subkeys):
        value = values[0]
        blocks = [int(key.rsplit(".", 1)[1]) for key in keys]
        self.stored.append((value["state"], (value["start"], value["end"]), blocks))
        return dict.fromkeys(keys, True)


def make_host(source, node: RecordingNode, span: tuple[int, int]) -> SpanHost:
    state = {"value": ServerState.ONLINE}

    def make_backend(loaded, budget: CacheBudget) -> SpanBackend:
        return SpanBackend(loaded, budget, 64, 1024)

    def make_record(where: tuple[int, int], new_state: ServerState) -> ServerRecord:
        return ServerRecord(peer_id="me", start=where[0], end=where[1], state=new_state, throughput=3.0)

    return SpanHost(
        source,
        torch.float32,
        "cpu",
        span,
        lambda per_token: CacheBudget(256 * per_token),
        make_backend,
        make_record,
        lambda: state["value"],
        node,
        "m",
        30.0,
    )


def test_move_loads_announces_swaps_then_withdraws(tiny_checkpoints: Callable[[str], Path]) -> None:
    source = resolve_model(tiny_checkpoints("llama"))  # 4 blocks
    reference = load_span(source, 0, 2, torch.float32)
    hidden = torch.randn(1, 3, source.config.hidden_size)

    async def main() -> None:
        node = RecordingNode()
        host = make_host(source, node, (0, 2))
        switch = await host.load()
        assert host.current_placement().start == 0
        old_session = switch.open_session(0, 2, 1, 16)
        first = switch.inference_step(old_session, hidden, 0)
        asked: list[list[int]] = []

        async def can_leave(blocks: list[int]) -> bool:
            asked.append(blocks)
            assert host.target == (1, 3) and host.current_placement() is None  # no second move while loading
            return True

        assert await host.move_to(1, can_leave)
        assert asked == [[0]]
        assert (host.start, host.end, host.target) == (1, 3, None)
        assert node.stored == [
            ("online", (0, 2), [0, 1]),  # still serving the old span while loading
            ("joining", (1, 3), [2]),  # the new span's other blocks: counted by others at once
            ("online", (1, 3), [1, 2]),  # swapped
            ("offline", (0, 2), [0]),  # the block it left
        ]
        # the session opened before the swap keeps its span and cache
        second = switch.inference_step(old_session, hidden[:, :1], 3)
        with torch.inference_mode():
            cache = reference.new_cache(0, 2, 1, 16)
            expected_first = reference(hidden, 0, cache)
            expected_second = reference(hidden[:, :1], 3, cache)
        torch.testing.assert_close(first, expected_first)
        torch.testing.assert_close(second, expected_second)
        # new sessions see only the new span; both spans share one cache budget
        used = switch.budget.used
        switch.close_session(old_session)
        assert switch.budget.used < used
        with pytest.raises(BadRequest, match="not within this server's blocks 1:3"):
            switch.open_session(0, 2, 1, 16)
        new_session = switch.open_session(1, 3, 1, 16)
        assert switch.inference_step(new_session, hidden, 0).shape == hidden.shape
        switch.close_session(new_session)
        assert switch.budget.used == 0

    asyncio.run(main())


def test_move_is_abandoned_when_leaving_would_uncover(tiny_checkpoints: Callable[[str], Path]) -> None:
    source = resolve_model(tiny_checkpoints("llama"))

    async def main() -> None:
        node = RecordingNode()
        host = make_host(source, node, (0, 2))
        switch = await host.load()
        old_backend = switch.current

        async def cannot_leave(blocks: list[int]) -> bool:
            return False

        assert not await host.move_to(2, cannot_leave)
        assert (host.start, host.end, host.target) == (0, 2, None)
        assert switch.current is old_backend
        assert node.stored[-1] == ("offline", (2, 4), [2, 3])  # the joining records are withdrawn
        assert host.current_placement() is not None  # it may try again later
        with pytest.raises(ValueError, match="cannot move"):
            await host.move_to(3, cannot_leave)  # past the model's end

    asyncio.run(main())
