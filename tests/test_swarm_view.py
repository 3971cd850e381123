"""The swarm view: per block its online servers and total throughput, per server its spans; table and JSON."""

from __future__ import annotations

import json

import pytest
from conftest import run_nectar

from engine.records import ServerRecord, ServerState
from engine.swarm_view import build_view, format_view


def rec(peer: str, start: int, end: int, state: ServerState = ServerState.ONLINE, throughput: float = 1.0):
    return ServerRecord(peer_id=peer, start=start, end=end, state=state, throughput=throughput, free_cache_tokens=7)


def per_block(num_blocks: int, *records: ServerRecord) -> dict[int, list[ServerRecord]]:
    return {index: [r for r in records if r.start <= index < r.end] for index in range(num_blocks)}


def test_view_of_a_swarm_with_a_gap_and_a_joining_server() -> None:
    peers = {name: f"12D3KooW{name * 8}" for name in ("a", "b", "j")}
    blocks = per_block(
        5,
        rec(peers["a"], 0, 3, throughput=2.0),
        rec(peers["b"], 1, 3, throughput=0.5),
        rec(peers["j"], 3, 4, ServerState.JOINING, throughput=9.0),
    )
    view = build_view("m", 5, blocks)
    assert [block.throughput for block in view.blocks] == [2.0, 2.5, 2.5, 0.0, 0.0]
    assert view.blocks[1].servers == tuple(sorted((peers["a"], peers["b"])))
    assert view.blocks[3].servers == () and view.blocks[3].others == (peers["j"],)
    assert view.uncovered == [3, 4] and view.bottleneck == 0.0 and view.num_servers == 3
    assert [(span.start, span.end, span.state) for span in view.spans] == [
        (0, 3, "online"),
        (1, 3, "online"),
        (3, 4, "joining"),
    ]
    data = json.loads(json.dumps(view.to_dict()))
    assert data["uncovered_blocks"] == [3, 4] and data["num_servers"] == 3
    assert data["blocks"][1]["servers"] == sorted((peers["a"], peers["b"]))
    assert data["servers"][0]["free_cache_tokens"] == 7
    text = format_view(view)
    assert "2 block(s) uncovered: 3, 4" in text
    assert "-- uncovered --" in text and "(jjjjjjjj)" in text


def test_a_moving_server_shows_both_spans() -> None:
    blocks = per_block(4, rec("m", 0, 2))
    blocks[2].append(rec("m", 1, 3, ServerState.JOINING))
    view = build_view("m", 4, blocks)
    assert [(span.start, span.end, span.state) for span in view.spans] == [(0, 2, "online"), (1, 3, "joining")]
    assert view.num_servers == 1


def test_needs_at_least_one_block() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        build_view("m", 0, {})


@pytest.mark.slow
def test_nectar_swarm_on_a_local_swarm(local_swarm) -> None:
    swarm = local_swarm("smollm2-135m", [(0, 15), (10, 30)], server_args=["--throughput", "100"])
    first, second = (child.ready["peer_id"] for child in swarm.servers)
    result = run_nectar("swarm", "smollm2-135m", "--initial-peers", *swarm.initial_peers, "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["num_blocks"] == 30 and view["uncovered_blocks"] == [] and view["num_servers"] == 2
    holders = [set(block["servers"]) for block in view["blocks"]]
    assert holders[:10] == [{first}] * 10 and holders[10:15] == [{first, second}] * 5
    assert holders[15:] == [{second}] * 15
    totals = [block["throughput"] for block in view["blocks"]]  # --throughput 100 is announced as given
    assert totals[0] == totals[20] == 100.0 and totals[12] == 200.0 and view["bottleneck_throughput"] == 100.0
    spans = {(server["peer_id"], server["start"], server["end"]) for server in view["servers"]}
    assert spans == {(first, 0, 15), (second, 10, 30)}

    table = run_nectar("swarm", "smollm2-135m", "--initial-peers", *swarm.initial_peers)
    assert table.returncode == 0, table.stderr
    assert "swarm smollm2-135m: 30 blocks, 2 servers" in table.stdout and "all blocks covered" in table.stdout
    print(table.stdout)
