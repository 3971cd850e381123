"""Records -> ServerPlacement, the join choice and the move decision of a server, on hand-made DHT snapshots."""

from __future__ import annotations

import dataclasses
import re

import pytest

from engine.balance import ServerPlacement
from engine.records import ServerRecord, ServerState
from engine.server import placement
from engine.server.server import ServerSettings

ONLINE, JOINING, DRAINING = ServerState.ONLINE, ServerState.JOINING, ServerState.DRAINING


def rec(peer: str, start: int, end: int, state: ServerState = ONLINE, throughput: float = 1.0) -> ServerRecord:
    return ServerRecord(peer_id=peer, start=start, end=end, state=state, throughput=throughput)


def snapshot(num_blocks: int, *records: tuple[ServerRecord, range | None]) -> dict[int, list[ServerRecord]]:
    """Per-block records as ``records.read_blocks`` returns them; a record sits on its span or on the given blocks."""
    blocks: dict[int, list[ServerRecord]] = {index: [] for index in range(num_blocks)}
    for record, where in records:
        for index in where if where is not None else range(record.start, record.end):
            blocks[index].append(record)
    return blocks


def test_one_span_info_per_online_or_joining_server() -> None:
    blocks = snapshot(
        6,
        (rec("a", 0, 3, throughput=2.0), None),
        (rec("b", 3, 6, JOINING, 1.5), None),
        (rec("c", 0, 6, DRAINING), None),  # leaving: others should fill in
    )
    spans = placement.spans_from_records(blocks, 6)
    expected = [ServerPlacement("a", 0, 3, 2.0), ServerPlacement("b", 3, 6, 1.5)]
    assert sorted(spans, key=lambda span: span.peer_id) == expected
    assert placement.spans_from_records(blocks, 6, exclude="a") == [ServerPlacement("b", 3, 6, 1.5)]


def test_records_that_do_not_fit_the_model_are_ignored() -> None:
    blocks = snapshot(6, (rec("a", 0, 3), None), (rec("far", 4, 99), range(4, 6)), (rec("inf", 3, 4), None))
    blocks[3][0] = dataclasses.replace(blocks[3][0], throughput=float("inf"))
    assert placement.spans_from_records(blocks, 6) == [ServerPlacement("a", 0, 3, 1.0)]
    assert placement.choose_join_start(blocks, 6, 3, 1.0, me="new") == 3


def test_a_moving_server_counts_where_it_is_going() -> None:
    # "m" still serves 0:3 (online there) and loads 3:6 (joining on the blocks it does not hold yet)
    blocks = snapshot(6, (rec("m", 0, 3), None), (rec("m", 3, 6, JOINING), None))
    assert placement.spans_from_records(blocks, 6) == [ServerPlacement("m", 3, 6, 1.0)]
    assert placement.moving_peers(blocks) == {"m"}


def test_uncovered_counts_only_settled_servers() -> None:
    blocks = snapshot(
        6,
        (rec("me", 0, 3), None),
        (rec("a", 0, 2), None),
        (rec("j", 2, 4, JOINING), None),  # loading: does not serve block 2 yet
        (rec("d", 0, 6, DRAINING), None),
    )
    assert placement.uncovered_without(blocks, "me", range(0, 3)) == [2]
    # a server that moves away from its blocks does not count either
    moving = snapshot(4, (rec("me", 0, 2), None), (rec("m", 0, 2), None), (rec("m", 2, 4, JOINING), None))
    assert placement.uncovered_without(moving, "me", [0, 1]) == [0, 1]
    assert placement.uncovered_without(moving, "m", [0, 1]) == []


def test_join_takes_the_gap_and_counts_joining_servers() -> None:
    blocks = snapshot(30, (rec("a", 0, 15), None))
    assert placement.choose_join_start(blocks, 30, 15, 1.0, me="new") == 15
    blocks = snapshot(30, (rec("a", 0, 15), None), (rec("b", 15, 30, JOINING), None))
    assert placement.choose_join_start(blocks, 30, 10, 1.0, me="new") == 0  # ties go to the lowest start
    # its own stale record (a restart with the same identity) does not count
    blocks = snapshot(30, (rec("a", 0, 15), None), (rec("new", 15, 30), None))
    assert placement.choose_join_start(blocks, 30, 15, 1.0, me="new") == 15


def test_redundant_server_moves_to_uncovered_blocks() -> None:
    blocks = snapshot(30, (rec("a", 0, 15), None), (rec("b", 0, 15), None))
    move = placement.decide_move(blocks, ServerPlacement("b", 0, 15, 1.0), 30, balance_quality=0.75)
    assert move is not None and move.start == 15 and move.old_bottleneck == 0


def test_never_moves_when_leaving_uncovers_a_block() -> None:
    # "b" alone holds blocks 0-4 and 10-14: every other span of 15 leaves one of them, though 15:30 is uncovered
    blocks = snapshot(30, (rec("a", 5, 10), None), (rec("b", 0, 15), None))
    assert placement.decide_move(blocks, ServerPlacement("b", 0, 15, 1.0), 30, balance_quality=0.75) is None
    # the other holder of b's blocks is itself moving away: b stays too
    blocks = snapshot(30, (rec("a", 0, 15), None), (rec("a", 15, 30, JOINING), None), (rec("b", 0, 15), None))
    assert placement.decide_move(blocks, ServerPlacement("b", 0, 15, 1.0), 30, balance_quality=0.75) is None


def test_shifts_towards_a_gap_keeping_the_blocks_only_it_holds() -> None:
    # after a server of 0:15 died: c alone holds 7-14, but moving to 0:15 keeps them and leaves only 15-21 (b's)
    blocks = snapshot(30, (rec("b", 15, 30), None), (rec("c", 7, 22), None))
    move = placement.decide_move(blocks, ServerPlacement("c", 7, 22, 1.0), 30, balance_quality=0.75)
    assert move is not None and move.start == 0
    assert placement.decide_move(blocks, ServerPlacement("b", 15, 30, 1.0), 30, balance_quality=0.75) is None


def test_uses_its_own_span_rather_than_its_last_announcement() -> None:
    # the DHT still shows b on 0:15, but b has already moved to 15:30: the swarm is balanced, nothing to do
    blocks = snapshot(30, (rec("a", 0, 15), None), (rec("b", 0, 15), None))
    assert placement.decide_move(blocks, ServerPlacement("b", 15, 30, 1.0), 30, balance_quality=0.75) is None


def test_balanced_swarm_stays() -> None:
    blocks = snapshot(30, (rec("a", 0, 15), None), (rec("b", 15, 30), None), (rec("c", 0, 15), None))
    for me in ("a", "b", "c"):
        record = next(record for held in blocks.values() for record in held if record.peer_id == me)
        info = ServerPlacement(me, record.start, record.end, record.throughput)
        assert placement.decide_move(blocks, info, 30, balance_quality=0.75) is None


def settings(**changes) -> ServerSettings:
    return dataclasses.replace(ServerSettings(model="m", new_swarm=True), **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"blocks": "0:4", "num_blocks": 4}, "not both"),
        ({"num_blocks": 0}, "--num-blocks must be at least 1"),
        ({"balance_quality": 0.0}, "--balance-quality must be in (0, 1]"),
        ({"balance_quality": 1.5}, "--balance-quality must be in (0, 1]"),
        ({"rebalance_period": -1.0}, "--rebalance-period must be >= 0"),
        ({"memory_budget": 0.0}, "--memory-budget must be a positive"),
        ({"max_join_delay": -1.0}, "--max-join-delay must be between"),
    ],
)
def test_settings_out_of_range_are_one_line_errors(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        placement.check_settings(settings(**changes))
    assert "\n" not in str(info.value)


def test_defaults_are_valid_and_num_blocks_is_bounded_by_the_model() -> None:
    placement.check_settings(settings())
    placement.check_settings(settings(num_blocks=15, balance_quality=1.0, rebalance_period=0.0))
    placement.check_num_blocks(30, 30)
    with pytest.raises(ValueError, match="more than the model's 30 blocks"):
        placement.check_num_blocks(31, 30)
