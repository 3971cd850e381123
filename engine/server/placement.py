"""Where a server without ``--blocks`` serves: its span at join, and whether to move later, read from the DHT.

The decisions are ``engine.balance``'s pure functions; this module turns DHT records into their input and adds the
two rules that need records rather than totals:

- a server counts as *settled* on a block when its record there is online and it announces no joining span
  anywhere (a server that is loading a new span will soon leave its old one);
- a server never leaves blocks that no other settled server holds (``uncovered_without``), checked both when it
  decides to move and again after its new span is loaded, right before it drops the old one. Blocks that the new
  span keeps do not count, so a server may shift towards a gap next to it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from hivemind.dht.node import DHTNode

from engine import records
from engine.balance import Move, ServerPlacement, choose_best_span, join_delay, should_move
from engine.records import ServerRecord, ServerState

if TYPE_CHECKING:
    from engine.server.server import ServerSettings

logger = logging.getLogger(__name__)

Blocks = Mapping[int, Sequence[ServerRecord]]
_COUNTED = (ServerState.ONLINE, ServerState.JOINING)  # draining servers are leaving: others should fill in


def spans_from_records(blocks: Blocks, num_blocks: int, exclude: str | None = None) -> list[ServerPlacement]:
    """One ``ServerPlacement`` per online or joining server (but ``exclude``), from the per-block records.

    A server that is moving shows its old span (online) on some blocks and its new one (joining) on others; it is
    counted where it is going, since its old span goes away once the new one is loaded. Records that do not fit
    the model (a span past its last block, an infinite throughput) are ignored: one broken peer must not stop
    others from choosing.
    """
    chosen: dict[str, ServerRecord] = {}
    for index in sorted(blocks):
        for record in blocks[index]:
            if record.peer_id == exclude or record.state not in _COUNTED:
                continue
            if record.end > num_blocks or not math.isfinite(record.throughput):
                continue
            current = chosen.get(record.peer_id)
            if current is None or (record.state == ServerState.JOINING and current.state != ServerState.JOINING):
                chosen[record.peer_id] = record
    return [ServerPlacement(record.peer_id, record.start, record.end, record.throughput) for record in chosen.values()]


def moving_peers(blocks: Blocks) -> set[str]:
    """Servers that announce a joining span somewhere: loading a first span, or a new one they are moving to."""
    return {record.peer_id for held in blocks.values() for record in held if record.state == ServerState.JOINING}


def uncovered_without(blocks: Blocks, peer_id: str, leaving: Sequence[int]) -> list[int]:
    """Blocks of ``leaving`` that no settled server (online there and not moving) other than ``peer_id`` holds."""
    moving = moving_peers(blocks) | {peer_id}
    return [
        index
        for index in leaving
        if not any(
            record.state == ServerState.ONLINE and record.peer_id not in moving for record in blocks.get(index, ())
        )
    ]


def choose_join_start(blocks: Blocks, num_blocks: int, span_length: int, throughput: float, me: str) -> int:
    """Start of the most under-served span for a joining server (joining servers count, so joins spread out)."""
    return choose_best_span(spans_from_records(blocks, num_blocks, exclude=me), num_blocks, span_length, throughput)


def decide_move(blocks: Blocks, me: ServerPlacement, num_blocks: int, balance_quality: float) -> Move | None:
    """Whether the server ``me`` (its span as it knows it, not as the DHT last heard) should move, and where."""
    spans = [*spans_from_records(blocks, num_blocks, exclude=me.peer_id), me]
    move = should_move(spans, num_blocks, me.peer_id, balance_quality)
    if move is None:
        return None
    new_end = move.start + me.end - me.start
    leaving = [index for index in range(me.start, me.end) if not move.start <= index < new_end]
    if uncovered_without(blocks, me.peer_id, leaving):
        return None  # a block it would leave has no settled server besides it (one may be about to leave it)
    return move


async def read_all(node: DHTNode, prefix: str, num_blocks: int) -> dict[int, list[ServerRecord]]:
    return await records.read_blocks(node, prefix, range(num_blocks))


async def join_start(
    node: DHTNode,
    prefix: str,
    num_blocks: int,
    span_length: int,
    throughput: float,
    me: str,
    max_delay_s: float,
    rng: np.random.Generator,
) -> int:
    """Wait a random delay (unless the span is the whole model: nothing to spread), then pick the span's start."""
    if span_length >= num_blocks:
        return 0
    delay = join_delay(rng, max_delay_s)
    logger.info(
        "waiting %.1f s before choosing %d of %d blocks, so concurrent joins spread", delay, span_length, num_blocks
    )
    await asyncio.sleep(delay)
    start = choose_join_start(await read_all(node, prefix, num_blocks), num_blocks, span_length, throughput, me)
    logger.info("chose blocks %d:%d (the most under-served span)", start, start + span_length)
    return start


async def rebalance_forever(
    node: DHTNode,
    prefix: str,
    num_blocks: int,
    me: Callable[[], ServerPlacement | None],
    move: Callable[[int], Awaitable[None]],
    period_s: float,
    balance_quality: float,
    rng: np.random.Generator,
) -> None:
    """Every ``period_s`` (jittered, so servers do not decide in lockstep) check whether to move, and move.

    ``me`` gives this server's current span, or None while it cannot move (loading, draining); ``move`` loads the
    new span, swaps to it and drops the old one, or gives up if that would leave a gap.
    """
    while True:
        await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))
        mine = me()
        if mine is None:
            continue
        try:
            decision = decide_move(await read_all(node, prefix, num_blocks), mine, num_blocks, balance_quality)
        except Exception as error:  # a DHT hiccup must not end rebalancing for the server's lifetime
            logger.warning("rebalancing check failed: %s", error)
            continue
        if decision is None:
            continue
        logger.info(
            "moving from blocks %d:%d to %d:%d (%s: bottleneck %.1f -> %.1f tokens/s)",
            mine.start,
            mine.end,
            decision.start,
            decision.start + mine.end - mine.start,
            decision.reason,
            decision.old_bottleneck,
            decision.new_bottleneck,
        )
        try:
            await move(decision.start)
        except Exception as error:  # e.g. out of memory while loading: keep serving the old span
            logger.warning("could not move to blocks starting at %d: %s", decision.start, error)


def check_settings(settings: ServerSettings) -> None:
    """One-line ValueErrors for balancing options out of range, before anything is loaded."""
    if settings.blocks is not None and settings.num_blocks is not None:
        raise ValueError("give either --blocks START:END or --num-blocks N, not both")
    if settings.num_blocks is not None and settings.num_blocks < 1:
        raise ValueError(f"--num-blocks must be at least 1, got {settings.num_blocks}")
    if not 0 < settings.balance_quality <= 1:
        raise ValueError(f"--balance-quality must be in (0, 1], got {settings.balance_quality}")
    if not settings.rebalance_period >= 0:
        raise ValueError(f"--rebalance-period must be >= 0 seconds (0: never), got {settings.rebalance_period}")
    if settings.memory_budget is not None and not settings.memory_budget > 0:
        raise ValueError(f"--memory-budget must be a positive number of GiB, got {settings.memory_budget}")
    if not 0 <= settings.max_join_delay <= 3600:
        raise ValueError(f"--max-join-delay must be between 0 and 3600 seconds, got {settings.max_join_delay}")


async def can_leave(node: DHTNode, prefix: str, num_blocks: int, me: str, leaving: Sequence[int]) -> bool:
    """Whether every block of ``leaving`` still has another settled server, read afresh from the DHT."""
    return not uncovered_without(await read_all(node, prefix, num_blocks), me, leaving)


async def peers_in_swarm(node: DHTNode, prefix: str, num_blocks: int, me: str, rng: np.random.Generator) -> list[str]:
    """Other servers of the swarm, online ones first, in random order (network probes spread over them)."""
    servers = records.spans_of(await read_all(node, prefix, num_blocks))
    servers.pop(me, None)
    peers = list(servers)
    rng.shuffle(peers)
    return sorted(peers, key=lambda peer: servers[peer].state != ServerState.ONLINE)


def check_num_blocks(num_blocks: int | None, total_blocks: int) -> None:
    if num_blocks is not None and num_blocks > total_blocks:
        raise ValueError(f"--num-blocks {num_blocks} is more than the model's {total_blocks} blocks")
