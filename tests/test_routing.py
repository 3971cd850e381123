"""``engine.client.routing``: the chain of servers that covers a range of blocks (pure functions, no swarm)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from engine.client.routing import MissingBlocksError, format_blocks, make_route
from engine.records import ServerRecord, ServerState


def server(peer_id: str, start: int, end: int, state=ServerState.ONLINE, throughput: float = 1.0) -> ServerRecord:
    return ServerRecord(peer_id=peer_id, start=start, end=end, state=state, throughput=throughput)


def per_block(servers: Sequence[ServerRecord], num_blocks: int) -> dict[int, list[ServerRecord]]:
    """The view ``read_blocks`` gives: each block's records."""
    return {index: [item for item in servers if item.start <= index < item.end] for index in range(num_blocks)}


def hops(route) -> list[tuple[str, int, int]]:
    return [(hop.peer_id, hop.start, hop.end) for hop in route]


def test_two_servers_cover_the_model_in_order() -> None:
    blocks = per_block([server("b", 15, 30), server("a", 0, 15)], 30)
    assert hops(make_route(blocks, 0, 30)) == [("a", 0, 15), ("b", 15, 30)]


def test_fewest_hops_prefers_the_server_that_reaches_farthest() -> None:
    servers = [server("short", 0, 2), server("long", 0, 6), server("mid", 2, 5), server("tail", 4, 8)]
    route = make_route(per_block(servers, 8), 0, 8)
    assert hops(route) == [("long", 0, 6), ("tail", 6, 8)]
    assert route[0].record == servers[1]


def test_overlapping_spans_are_entered_in_the_middle() -> None:
    blocks = per_block([server("a", 0, 3), server("b", 1, 4)], 4)
    assert hops(make_route(blocks, 0, 4)) == [("a", 0, 3), ("b", 3, 4)]


def test_route_for_a_sub_range_is_cut_to_it() -> None:
    blocks = per_block([server("a", 0, 10)], 10)
    assert hops(make_route(blocks, 2, 7)) == [("a", 2, 7)]


def test_missing_blocks_are_named() -> None:
    blocks = per_block([server("a", 0, 3), server("b", 5, 7)], 10)
    with pytest.raises(MissingBlocksError) as caught:
        make_route(blocks, 0, 10)
    assert caught.value.blocks == [3, 4, 7, 8, 9]
    assert str(caught.value) == "no available server holds block(s) 3-4, 7-9"


def test_an_empty_swarm_misses_every_block() -> None:
    with pytest.raises(MissingBlocksError, match=r"block\(s\) 0-29$"):
        make_route({}, 0, 30)


@pytest.mark.parametrize("state", [ServerState.JOINING, ServerState.DRAINING, ServerState.OFFLINE])
def test_servers_that_are_not_online_are_not_used(state: ServerState) -> None:
    blocks = per_block([server("a", 0, 2), server("b", 2, 4, state=state)], 4)
    with pytest.raises(MissingBlocksError, match=r"block\(s\) 2-3"):
        make_route(blocks, 0, 4)
    blocks = per_block([server("a", 0, 2), server("b", 2, 4, state=state), server("c", 2, 4)], 4)
    assert hops(make_route(blocks, 0, 4)) == [("a", 0, 2), ("c", 2, 4)]


def test_banned_servers_are_avoided() -> None:
    blocks = per_block([server("a", 0, 4), server("b", 0, 2), server("c", 2, 4)], 4)
    assert hops(make_route(blocks, 0, 4, banned={"a"})) == [("b", 0, 2), ("c", 2, 4)]
    with pytest.raises(MissingBlocksError, match=r"block\(s\) 2-3"):
        make_route(blocks, 0, 4, banned={"a", "c"})


def test_ties_are_spread_by_throughput() -> None:
    blocks = per_block([server("fast", 0, 4, throughput=9.0), server("slow", 0, 4, throughput=1.0)], 4)
    rng = random.Random(0)
    chosen = [make_route(blocks, 0, 4, rng=rng)[0].peer_id for _ in range(400)]
    assert 300 < chosen.count("fast") < 400 and chosen.count("slow") > 0


def test_same_seed_same_route() -> None:
    servers = [server(f"s{index}", index % 3, 4 + index % 3, throughput=1 + index) for index in range(6)]
    blocks = per_block(servers, 6)
    first = hops(make_route(blocks, 0, 6, rng=random.Random(7)))
    assert hops(make_route(blocks, 0, 6, rng=random.Random(7))) == first


def test_format_blocks_compacts_runs() -> None:
    assert format_blocks([5, 0, 1, 2]) == "0-2, 5"
    assert format_blocks([3]) == "3"
    assert format_blocks([]) == ""
    assert format_blocks([1, 3, 4, 6]) == "1, 3-4, 6"
