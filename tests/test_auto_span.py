"""Servers started without --blocks choose their spans, cover the model, and cover it again after a server dies.

Real server processes on 127.0.0.1 serving the embedded model (smollm2-135m, 30 blocks); the swarm is read the
way a client reads it, from the DHT. Periods and record lifetimes are shortened so that the test takes seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import torch
from conftest import run_nectar

from engine.client.swarm import SwarmConnection
from engine.records import ServerRecord, ServerState
from engine.server.span_size import GIB, block_cost, blocks_that_fit
from engine.weights import resolve_model

pytestmark = pytest.mark.slow

MODEL, PREFIX, NUM_BLOCKS = "smollm2-135m", "smollm2-135m", 30
RECORD_TTL = 4.0  # a killed server's records vanish after this many seconds
FAST = ["--max-join-delay", "2", "--rebalance-period", "2", "--record-ttl", str(RECORD_TTL), "--announce-period", "1"]
RECOVERY_TIMEOUT = 60.0  # bound on: record expiry + a rebalancing check (period 2 s, jittered) + loading 15 blocks

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, period: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(period)


def online_holders(swarm: SwarmConnection, gone: set[str] = frozenset()) -> dict[int, set[str]]:
    """Per block, the online servers holding it (those in ``gone`` left: their records may not have expired yet)."""
    blocks: dict[int, list[ServerRecord]] = swarm.run(swarm.read_blocks(0, NUM_BLOCKS), timeout=30)
    return {
        index: {r.peer_id for r in held if r.state == ServerState.ONLINE and r.peer_id not in gone}
        for index, held in blocks.items()
    }


def all_covered(swarm: SwarmConnection, gone: set[str] = frozenset()) -> dict[int, set[str]] | None:
    holders = online_holders(swarm, gone)
    return holders if all(holders[index] for index in range(NUM_BLOCKS)) else None


def test_three_servers_cover_the_model_and_recover_when_one_is_killed(local_swarm) -> None:
    swarm = local_swarm(MODEL, [None, None, None], server_args=["--num-blocks", "15", *FAST])
    peers = [child.ready["peer_id"] for child in swarm.servers]
    assert all(child.ready["blocks"][1] - child.ready["blocks"][0] == 15 for child in swarm.servers)
    with SwarmConnection(swarm.initial_peers, PREFIX) as client:
        holders = wait_for(lambda: all_covered(client), RECOVERY_TIMEOUT, "covering all 30 blocks")
        # kill a server that alone holds some block, so that the others must move to cover it
        alone = {peer for index in range(NUM_BLOCKS) if len(holders[index]) == 1 for peer in holders[index]}
        victim = sorted(alone)[0]
        swarm.kill(peers.index(victim))
        killed_at = time.monotonic()
        uncovered = [index for index in range(NUM_BLOCKS) if holders[index] == {victim}]
        holders = wait_for(lambda: all_covered(client, {victim}), RECOVERY_TIMEOUT, "covering the blocks again")
        elapsed = time.monotonic() - killed_at
    survivors = {peer for held in holders.values() for peer in held}
    assert victim not in survivors and len(survivors) == 2
    assert all(holders[index] for index in uncovered)
    print(f"blocks {uncovered[0]}:{uncovered[-1] + 1} covered again {elapsed:.1f} s after the kill")
    for index, child in enumerate(swarm.servers):
        if peers[index] != victim:
            assert child.process.poll() is None, child.tail()  # survivors kept serving through the move


def test_memory_budget_limits_the_span(local_swarm) -> None:
    budget_gib, training_mb = 1.0, 64
    config = resolve_model(MODEL).config
    cost = block_cost(config, torch.float32, 16384, 8192, training_mb * 2**20, movable=True)  # FAST rebalances
    expected = blocks_that_fit(int(budget_gib * GIB), cost, NUM_BLOCKS)
    assert 1 <= expected < NUM_BLOCKS
    args = ["--memory-budget", str(budget_gib), "--training-cache-mb", str(training_mb), *FAST]
    swarm = local_swarm(MODEL, [None], server_args=args)
    start, end = swarm.servers[0].ready["blocks"]
    assert end - start == expected
    with SwarmConnection(swarm.initial_peers, PREFIX) as client:
        holders = wait_for(lambda: online_holders(client) or None, 30, "reading the swarm")
    assert [index for index in range(NUM_BLOCKS) if holders[index]] == list(range(start, end))


def test_bad_balancing_option_is_a_one_line_error() -> None:
    result = run_nectar("serve", MODEL, "--new-swarm", "--balance-quality", "1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "nectar: error: --balance-quality must be in (0, 1], got 1.5"
