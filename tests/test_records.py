"""``engine.records``: the DHT record schema, its validation, and reading coverage from a real DHT node."""

from __future__ import annotations

import asyncio

import pytest

from engine.records import (
    PROTOCOL_VERSION,
    ServerRecord,
    ServerState,
    announce,
    block_key,
    default_dht_prefix,
    read_blocks,
    spans_of,
)


def record(peer_id: str = "peerA", start: int = 0, end: int = 4, **overrides) -> ServerRecord:
    return ServerRecord(peer_id=peer_id, start=start, end=end, state=ServerState.ONLINE, **overrides)


def test_round_trip_through_a_plain_dict() -> None:
    original = record(throughput=12.5, free_cache_tokens=300, dtype="bfloat16", adapters=("lora-a",))
    raw = original.to_dict()
    assert raw["state"] == "online" and raw["adapters"] == ["lora-a"] and raw["version"] == PROTOCOL_VERSION
    assert ServerRecord.from_dict(raw) == original


def test_unknown_fields_are_ignored() -> None:
    raw = record().to_dict() | {"gpu": "H100", "future_field": {"nested": [1, 2]}}
    assert ServerRecord.from_dict(raw) == record()


def test_missing_optional_fields_take_defaults() -> None:
    parsed = ServerRecord.from_dict({"peer_id": "p", "start": 2, "end": 3, "state": "draining"})
    assert parsed == ServerRecord("p", 2, 3, ServerState.DRAINING)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "online",
        [0, 4],
        {},
        {"peer_id": "p", "start": 0, "end": 4},  # no state
        {"peer_id": "p", "start": 0, "end": 4, "state": "sleeping"},  # unknown state
        {"peer_id": "p", "start": 4, "end": 4, "state": "online"},  # empty span
        {"peer_id": "p", "start": 3, "end": 1, "state": "online"},  # reversed span
        {"peer_id": "p", "start": -1, "end": 1, "state": "online"},
        {"peer_id": "p", "start": "0", "end": 4, "state": "online"},
        {"peer_id": "p", "start": 0.5, "end": 4, "state": "online"},
        {"peer_id": 7, "start": 0, "end": 4, "state": "online"},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "throughput": -1.0},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "throughput": "fast"},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "inference_rps": -5},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "adapters": 5},
        # numbers that would break routing or chunking on the client
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "throughput": float("nan")},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "inference_rps": True},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "free_cache_tokens": "lots"},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "free_cache_tokens": -3},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "max_request_tokens": 0},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "max_request_tokens": 2.5},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "dtype": 16},
        {"peer_id": "p", "start": 0, "end": 4, "state": "online", "version": None},
    ],
)
def test_malformed_or_lying_records_are_dropped(raw) -> None:
    assert ServerRecord.from_dict(raw) is None


def test_records_that_pass_validation_are_safe_to_route_on() -> None:
    """What ``from_dict`` lets through never makes routing raise anything but ``MissingBlocksError``."""
    from engine.client.routing import make_route

    raw = record(throughput=0, inference_rps=2, free_cache_tokens=0, max_request_tokens=1).to_dict()
    parsed = ServerRecord.from_dict(raw)
    assert parsed is not None
    assert [(hop.start, hop.end) for hop in make_route({index: [parsed] for index in range(4)}, 0, 4)] == [(0, 4)]


def test_default_prefix_comes_from_the_model_name() -> None:
    assert default_dht_prefix("smollm2-135m") == "smollm2-135m"
    assert default_dht_prefix("/models/Llama-3.1-8B/") == "Llama-3-1-8B"
    assert default_dht_prefix("/models/SmolLM2.Q4_1.gguf") == "SmolLM2-Q4_1"
    assert block_key("swarm", 7) == "swarm.7"


def test_spans_of_gives_one_record_per_server() -> None:
    a, b = record("a", 0, 2), record("b", 1, 3)
    assert spans_of({0: [a], 1: [a, b], 2: [b]}) == {"a": a, "b": b}


def test_announce_and_read_through_a_dht_node() -> None:
    """A real (single, loopback) DHT node: announced spans come back; lying and stale entries do not."""
    from hivemind.dht.node import DHTNode
    from hivemind.p2p import P2P
    from hivemind.utils import get_dht_time

    async def scenario() -> dict[int, list[ServerRecord]]:
        p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        node = await DHTNode.create(p2p=p2p)
        try:
            await announce(node, "tiny", record("good", 0, 2), expiration_s=60)
            await announce(node, "tiny", ServerRecord("gone", 0, 3, ServerState.OFFLINE), expiration_s=60)
            await announce(node, "tiny", ServerRecord("slow", 1, 3, ServerState.JOINING), expiration_s=60)
            expiration = get_dht_time() + 60
            # a record stored under another peer's subkey, one outside its own span, and garbage
            await node.store(block_key("tiny", 0), record("victim", 0, 1).to_dict(), expiration, subkey="liar")
            await node.store(block_key("tiny", 2), record("wrong", 0, 2).to_dict(), expiration, subkey="wrong")
            await node.store(block_key("tiny", 1), {"peer_id": "junk", "start": "x"}, expiration, subkey="junk")
            return await read_blocks(node, "tiny", range(4))
        finally:
            await node.shutdown()
            await p2p.shutdown()

    blocks = asyncio.run(scenario())
    assert {index: sorted(item.peer_id for item in items) for index, items in blocks.items()} == {
        0: ["good"],
        1: ["good", "slow"],
        2: ["slow"],
        3: [],
    }
    # joining servers are shown (routing skips them); offline ones are gone at once
    assert {item.peer_id: item.state for item in blocks[1]} == {"good": ServerState.ONLINE, "slow": ServerState.JOINING}
