"""Latency-aware routing: ``inference_route`` as a pure function over records and round trips (fast), and a real
swarm where a server's round trip is made slower and the client's chain moves off it (slow)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_checkpoint

from engine.client.config import ClientSettings
from engine.client.model import DistributedCausalLM
from engine.client.pinger import Pinger
from engine.client.routing import MissingBlocksError, hop_cost, inference_route
from engine.records import ServerRecord, ServerState


def server(
    peer_id: str,
    start: int,
    end: int,
    rps: float = 1000.0,
    cache: int = 10_000,
    state: ServerState = ServerState.ONLINE,
) -> ServerRecord:
    return ServerRecord(peer_id=peer_id, start=start, end=end, state=state, inference_rps=rps, free_cache_tokens=cache)


def per_block(servers: Sequence[ServerRecord], num_blocks: int) -> dict[int, list[ServerRecord]]:
    return {index: [item for item in servers if item.start <= index < item.end] for index in range(num_blocks)}


def hops(route) -> list[tuple[str, int, int]]:
    return [(hop.peer_id, hop.start, hop.end) for hop in route]


def route(servers, num_blocks, rtts, **options):
    return hops(inference_route(per_block(servers, num_blocks), 0, num_blocks, rtts, default_rtt=1.0, **options))


def test_the_replica_with_the_shorter_round_trip_wins() -> None:
    servers = [server("head", 0, 15), server("near", 15, 30), server("far", 15, 30)]
    rtts = {"head": 0.01, "near": 0.01, "far": 0.2}
    assert route(servers, 30, rtts) == [("head", 0, 15), ("near", 15, 30)]
    assert route(servers, 30, {**rtts, "near": 0.5}) == [("head", 0, 15), ("far", 15, 30)]


def test_compute_time_counts_so_a_slow_server_is_bypassed_when_round_trips_are_cheap() -> None:
    servers = [server("slow", 0, 10, rps=10.0), server("a", 0, 5, rps=1000.0), server("b", 5, 10, rps=1000.0)]
    # one hop through "slow" costs 1 s of compute; two fast hops cost two round trips
    assert route(servers, 10, {"slow": 0.01, "a": 0.01, "b": 0.01}) == [("a", 0, 5), ("b", 5, 10)]
    assert route(servers, 10, {"slow": 0.01, "a": 1.0, "b": 1.0}) == [("slow", 0, 10)]
    assert hop_cost(servers[0], 10, 0.01) == pytest.approx(1.01)


def test_a_fast_server_is_left_in_the_middle_of_its_span_when_that_pays() -> None:
    servers = [server("wide", 0, 8, rps=100.0), server("tail", 4, 8, rps=1.0), server("tip", 6, 10, rps=1000.0)]
    assert route(servers, 10, {"wide": 0.01, "tail": 0.01, "tip": 0.01}) == [("wide", 0, 6), ("tip", 6, 10)]


def test_unmeasured_servers_cost_the_default_round_trip() -> None:
    servers = [server("known", 0, 4), server("unknown", 0, 4)]
    assert route(servers, 4, {"known": 0.5}) == [("known", 0, 4)]  # default_rtt is 1.0


def test_banned_and_cacheless_servers_are_used_only_as_a_last_resort() -> None:
    servers = [server("banned", 0, 4), server("full", 0, 4, cache=10), server("ok", 0, 4)]
    rtts = {"banned": 0.001, "full": 0.001, "ok": 0.3}
    assert route(servers, 4, rtts, banned={"banned"}, cache_tokens=100) == [("ok", 0, 4)]
    assert route(servers[:2], 4, rtts, banned={"banned"}, cache_tokens=100) == [("full", 0, 4)]
    assert route(servers[:1], 4, rtts, banned={"banned"}) == [("banned", 0, 4)]


def test_excluded_and_offline_servers_are_never_used() -> None:
    servers = [server("refused", 0, 4), server("draining", 2, 4, state=ServerState.DRAINING), server("a", 0, 2)]
    with pytest.raises(MissingBlocksError, match=r"block\(s\) 2-3$"):
        route(servers, 4, {}, excluded={"refused"})


def test_a_sub_range_is_routed_on_its_own() -> None:
    servers = [server("a", 0, 15), server("b", 15, 30), server("c", 10, 30)]
    blocks = per_block(servers, 30)
    rtts = {"a": 0.01, "b": 0.01, "c": 0.02}
    assert hops(inference_route(blocks, 15, 30, rtts, default_rtt=1.0)) == [("b", 15, 30)]
    assert hops(inference_route(blocks, 12, 20, rtts, default_rtt=1.0)) == [("c", 12, 20)]


def test_round_trips_are_smoothed() -> None:
    pinger = Pinger(p2p=None, period=1.0, timeout=2.0, smoothing=0.5)  # type: ignore[arg-type]
    assert pinger.record("a", 0.1) == pytest.approx(0.1)
    assert pinger.record("a", 0.3) == pytest.approx(0.2)
    pinger.extra_latency["a"] = 1.0
    assert pinger.estimate("a") == pytest.approx(1.2) and pinger.estimate("b") is None


def test_a_failed_server_counts_as_the_ping_timeout_until_it_answers_again() -> None:
    pinger = Pinger(p2p=None, period=1.0, timeout=2.0, smoothing=0.5)  # type: ignore[arg-type]
    pinger.record("a", 0.01)
    pinger.record_failure("a")
    assert pinger.estimate("a") == 2.0
    assert pinger.record("a", 0.02) == pytest.approx(0.02)  # set anew, not averaged with the failure
    assert pinger.record("a", 0.04) == pytest.approx(0.03)


@pytest.mark.slow
def test_the_chain_moves_off_a_server_whose_round_trip_gets_slower(local_swarm, tmp_path: Path) -> None:
    """Servers A and B hold 15:30; B answers every RPC 1 s late (the server's test-only ``--simulated-delay``),
    so the client measures it slower and routes through A. Then A's round trip is made slower by injecting latency into
    the client's RTT table (``Pinger.extra_latency``, 2 s), and the next session goes through B."""
    checkpoint = make_tiny_checkpoint(tmp_path / "llama30", "llama", num_layers=30)
    swarm = local_swarm(checkpoint, [(0, 15), (15, 30)])
    delayed = swarm.add_server((15, 30), ["--simulated-delay", "1.0"])
    fast, slow = swarm.servers[1].ready["peer_id"], delayed.ready["peer_id"]
    model = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers, settings=ClientSettings(ping_period=0.5))
    pinger = model.swarm.router.pinger

    def chain_for_15_30() -> list[str]:
        with torch.inference_mode(), model.inference_session(max_length=8) as session:
            session.step(model.embed(torch.tensor([[1, 2, 3]])))
            return [hop.peer_id for hop in session.route if hop.end == 30]

    try:
        assert chain_for_15_30() == [fast]
        assert pinger.estimate(slow) >= 1.0 > pinger.estimate(fast)
        measured = dict(pinger.measured_at)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pinger.measured_at[p] <= measured[p] for p in (fast, slow)):
            time.sleep(0.2)  # pings go on in the background (every 0.5 s here)
        assert all(pinger.measured_at[peer] > measured[peer] for peer in (fast, slow))

        pinger.extra_latency[fast] = 2.0
        assert chain_for_15_30() == [slow]
    finally:
        model.close()
