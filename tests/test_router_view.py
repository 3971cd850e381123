"""``Router.view`` reuses a recent DHT view instead of reading the DHT before every request, and reads afresh
after a failure or when the view lacks a block (fast: the swarm connection is a stand-in counting DHT reads)."""

from __future__ import annotations

import asyncio

import pytest

from engine.client.config import ClientSettings
from engine.client.router import Router
from engine.client.routing import Hop
from engine.records import ServerRecord, ServerState


class CountingSwarm:
    """Stands in for ``SwarmConnection``: ``read_blocks`` answers from ``records`` and counts the reads."""

    def __init__(self, records: list[ServerRecord]):
        self.records, self.reads, self.p2p = records, 0, None

    async def read_blocks(self, start: int, end: int) -> dict[int, list[ServerRecord]]:
        self.reads += 1
        return {index: [r for r in self.records if r.start <= index < r.end] for index in range(start, end)}


def record(peer: str, start: int, end: int, state: ServerState = ServerState.ONLINE) -> ServerRecord:
    return ServerRecord(peer_id=peer, start=start, end=end, state=state, inference_rps=100.0)


async def _views(router: Router, count: int, start: int = 0, end: int = 4) -> None:
    for _ in range(count):
        await router.view(start, end)
    await router.close()


def test_a_recent_view_is_reused_and_a_failure_reads_afresh() -> None:
    swarm = CountingSwarm([record("a", 0, 2), record("b", 2, 4)])
    router = Router(swarm, ClientSettings(view_max_age=60.0))
    asyncio.run(_views(router, 5))
    assert swarm.reads == 1
    asyncio.run(_views(router, 1, 1, 3))  # a part of a range already read is in the view too
    assert swarm.reads == 1
    router.failed(Hop("a", 0, 2, swarm.records[0]), ConnectionError("gone"))
    asyncio.run(_views(router, 2))
    assert swarm.reads == 2


def test_max_age_zero_reads_every_time() -> None:
    swarm = CountingSwarm([record("a", 0, 4)])
    asyncio.run(_views(Router(swarm, ClientSettings(view_max_age=0.0)), 3))
    assert swarm.reads == 3


def test_a_block_without_an_online_server_is_read_again() -> None:
    swarm = CountingSwarm([record("a", 0, 2), record("b", 2, 4, ServerState.JOINING)])
    asyncio.run(_views(Router(swarm, ClientSettings(view_max_age=60.0)), 3))
    assert swarm.reads == 3


def test_a_negative_max_age_is_refused() -> None:
    with pytest.raises(ValueError, match="view max age must be 0 or more, got -1"):
        ClientSettings(view_max_age=-1)
