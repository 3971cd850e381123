"""Announced numbers are clipped to plausible ranges, routing never raises on extreme ones, and a client believes
what it measured of a server over what the server announces (pure functions, no swarm)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from engine.client.routing import inference_route, make_route
from engine.client.speeds import SpeedBook
from engine.records import MAX_CACHE_TOKENS, MAX_INFERENCE_RPS, MAX_THROUGHPUT, ServerRecord, ServerState
from engine.server import placement

EXTREMES = [math.inf, -math.inf, math.nan, 1e308, -1.0, 0.0, 1e-300]


def announced(peer: str, start: int, end: int, **numbers) -> dict:
    return {"peer_id": peer, "start": start, "end": end, "state": "online", **numbers}


def per_block(records: list[ServerRecord], num_blocks: int) -> dict[int, list[ServerRecord]]:
    return {index: [item for item in records if item.start <= index < item.end] for index in range(num_blocks)}


@pytest.mark.parametrize("value", [math.inf, 1e308, 10 * MAX_THROUGHPUT])
def test_absurd_throughput_is_clipped(value: float) -> None:
    record = ServerRecord.from_dict(announced("a", 0, 2, throughput=value, inference_rps=value))
    assert record.throughput == MAX_THROUGHPUT
    assert record.inference_rps == MAX_INFERENCE_RPS


@pytest.mark.parametrize("value", [math.nan, -1.0, -math.inf, "fast", None, True, [1.0]])
def test_nonsense_throughput_drops_the_record(value) -> None:
    assert ServerRecord.from_dict(announced("a", 0, 2, throughput=value)) is None
    assert ServerRecord.from_dict(announced("a", 0, 2, inference_rps=value)) is None


def test_cache_numbers_are_clipped_and_must_be_counts() -> None:
    record = ServerRecord.from_dict(announced("a", 0, 2, free_cache_tokens=10**30, max_request_tokens=10**30))
    assert record.free_cache_tokens == record.max_request_tokens == MAX_CACHE_TOKENS
    for bad in (-5, 1.5, math.inf, "many"):
        assert ServerRecord.from_dict(announced("a", 0, 2, free_cache_tokens=bad)) is None
    assert ServerRecord.from_dict(announced("a", 0, 2, max_request_tokens=0)) is None


def test_two_huge_claims_do_not_break_training_routing() -> None:
    """The issue's failure: two records of 1e308 tokens/s made the weighted choice raise for every client."""
    liars = [ServerRecord.from_dict(announced(name, 0, 4, throughput=1e308)) for name in ("x", "y")]
    honest = ServerRecord(peer_id="h", start=0, end=4, state=ServerState.ONLINE, throughput=100.0)
    blocks = per_block([*liars, honest], 4)
    rng = random.Random(0)
    for _ in range(50):
        make_route(blocks, 0, 4, rng=rng)


@pytest.mark.parametrize("value", EXTREMES)
def test_routing_never_raises_on_records_built_with_extreme_numbers(value: float) -> None:
    """Records made in code skip ``from_dict``'s checks: routing still keeps its weights and costs finite."""
    odd = ServerRecord(peer_id="odd", start=0, end=3, state=ServerState.ONLINE, throughput=value, inference_rps=value)
    twin = ServerRecord(peer_id="twin", start=0, end=3, state=ServerState.ONLINE, throughput=value, inference_rps=value)
    plain = ServerRecord(peer_id="plain", start=0, end=3, state=ServerState.ONLINE)
    blocks = per_block([odd, twin, plain], 3)
    rng = random.Random(1)
    for _ in range(20):
        assert make_route(blocks, 0, 3, rng=rng)[0].end == 3
    route = inference_route(blocks, 0, 3, {}, default_rtt=0.1)
    assert route[-1].end == 3


def test_a_liar_does_not_stop_servers_from_choosing_a_span() -> None:
    liar = ServerRecord.from_dict(announced("liar", 0, 2, throughput=1e308))
    honest = ServerRecord(peer_id="h", start=2, end=4, state=ServerState.ONLINE, throughput=10.0)
    blocks = per_block([liar, honest], 4)
    start = placement.choose_join_start(blocks, 4, 2, 10.0, "me")
    assert start in (0, 1, 2)
    assert np.isfinite(placement.spans_from_records(blocks, 4)[0].throughput)


def share_of(peer: str, blocks: dict, draws: int = 2000) -> float:
    rng = random.Random(2)
    counts = Counter(make_route(blocks, 0, 4, rng=rng)[0].peer_id for _ in range(draws))
    return counts[peer] / draws


def test_measured_speed_caps_a_liar_share() -> None:
    """A server announcing 1e308 takes almost all traffic until measured; then it gets what it delivers."""
    liar = ServerRecord.from_dict(announced("liar", 0, 4, throughput=1e308, inference_rps=1e308))
    honest = ServerRecord(peer_id="h", start=0, end=4, state=ServerState.ONLINE, throughput=100.0, inference_rps=20.0)
    blocks = per_block([liar, honest], 4)
    assert inference_route(blocks, 0, 4, {"liar": 0.01, "h": 0.01}, 0.1)[0].peer_id == "liar"
    assert share_of("liar", blocks) > 0.99
    speeds = SpeedBook()
    speeds.observe(liar, tokens=512, num_blocks=4, seconds=10.24)  # 50 tokens/s per block, measured
    trusted = speeds.trusted_blocks(blocks)
    assert trusted[0][0].throughput == pytest.approx(50.0)
    assert trusted[0][0].inference_rps == pytest.approx(MAX_INFERENCE_RPS * 50.0 / MAX_THROUGHPUT)
    assert 0.2 < share_of("liar", trusted) < 0.45  # about 50 / (50 + 100)
    assert inference_route(trusted, 0, 4, {"liar": 0.01, "h": 0.01}, 0.1)[0].peer_id == "h"  # 5 vs 20 steps/s


def test_measurement_never_raises_a_claim_and_ignores_tiny_requests() -> None:
    server = ServerRecord(peer_id="s", start=0, end=8, state=ServerState.ONLINE, throughput=20.0)
    speeds = SpeedBook()
    speeds.observe(server, tokens=1, num_blocks=8, seconds=5.0)  # one token measures the round trip, not compute
    assert speeds.trusted(server) is server
    speeds.observe(server, tokens=1000, num_blocks=4, seconds=1.0)  # half the span: 500 tokens/s per block
    assert speeds.measured["s"] == pytest.approx(500.0)
    assert speeds.trusted(server) is server  # faster than announced: the announcement stands
    speeds.observe(server, tokens=1000, num_blocks=8, seconds=math.inf)
    assert speeds.measured["s"] == pytest.approx(500.0)
