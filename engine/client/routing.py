"""Choosing the chain of servers that covers a range of blocks: pure functions over records and measured RTTs.

- ``inference_route``: the chain with the lowest expected time per generated token (a shortest path whose hop
  cost is the measured round trip to the server plus its announced compute time for the blocks it runs).
- ``make_route``: fewest hops, ties spread over servers by throughput; used for forward/backward (training),
  where the bulk work matters more than a round trip and load should spread over the swarm.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from engine.quantization import at_least
from engine.records import MAX_INFERENCE_RPS, MAX_THROUGHPUT, ServerRecord, ServerState, plausible

# Added to a hop's cost to avoid a server unless nothing else covers its blocks. Bans outweigh a lack of cache:
# a banned server failed, a server short of cache only announced so up to one announce period ago.
BAN_PENALTY = 1e6
NO_CACHE_PENALTY = 1e3
RELAY_PENALTY = 0.1  # seconds added to a relayed server: its extra hop, and a relay is shared; direct ones first


class MissingBlocksError(RuntimeError):
    """No reachable server holds some blocks; the message names them (and why, when known)."""

    def __init__(self, blocks: Sequence[int], detail: str = "", headline: str = "no available server holds"):
        message = f"{headline} block(s) {format_blocks(blocks)}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.blocks = list(blocks)


@dataclass(frozen=True)
class Hop:
    """One server of a route and the blocks [start, end) the client runs on it."""

    peer_id: str
    start: int
    end: int
    record: ServerRecord


def format_blocks(blocks: Sequence[int]) -> str:
    """Compact ranges: [0, 1, 2, 5] -> '0-2, 5'."""
    parts, run = [], []
    for block in sorted(blocks):
        if run and block == run[-1] + 1:
            run.append(block)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [block]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)


def missing_blocks(
    blocks: Mapping[int, Sequence[ServerRecord]], start: int, end: int, excluded: Collection[str] = ()
) -> list[int]:
    """Blocks in [start, end) that no online, not excluded server holds."""
    return [
        index for index in range(start, end) if not any(_usable(record, excluded) for record in blocks.get(index, ()))
    ]


def make_route(
    blocks: Mapping[int, Sequence[ServerRecord]],
    start: int,
    end: int,
    banned: Collection[str] = (),
    rng: random.Random | None = None,
) -> list[Hop]:
    """Fewest hops from ``start`` to ``end``: at each block take a server that reaches farthest.

    Ties are broken at random (weighted by throughput) so that clients spread over equivalent servers.
    """
    rng = rng or random.Random()
    missing = missing_blocks(blocks, start, end, banned)
    if missing:
        raise MissingBlocksError(missing)
    route, position = [], start
    while position < end:
        candidates = [record for record in blocks[position] if _usable(record, banned)]
        reach = max(min(record.end, end) for record in candidates)
        farthest = [record for record in candidates if min(record.end, end) == reach]
        chosen = rng.choices(farthest, weights=[_share(record) for record in farthest])[0]
        route.append(Hop(chosen.peer_id, position, reach, chosen))
        position = reach
    return route


def hop_cost(record: ServerRecord, num_blocks: int, rtt: float) -> float:
    """Expected seconds one generated token spends on this hop: the round trip plus the blocks' compute."""
    return rtt + num_blocks / max(plausible(record.inference_rps, MAX_INFERENCE_RPS) or 0.0, 1e-9)


def inference_route(
    blocks: Mapping[int, Sequence[ServerRecord]],
    start: int,
    end: int,
    rtts: Mapping[str, float],
    default_rtt: float,
    banned: Collection[str] = (),
    excluded: Collection[str] = (),
    cache_tokens: int = 0,
) -> list[Hop]:
    """The chain over [start, end) with the lowest expected latency per step (Dijkstra over span boundaries).

    ``rtts`` are smoothed round trips by peer (``default_rtt`` for unmeasured ones). ``excluded`` servers are never
    used (they refused this session); ``banned`` ones and those announcing fewer than ``cache_tokens`` free cache
    tokens are used only where nothing else covers their blocks. A path only needs to switch servers at span
    boundaries: between two boundaries the cost is linear in where the switch happens, so an end is optimal.
    """
    missing = missing_blocks(blocks, start, end, excluded)
    if missing:
        raise MissingBlocksError(missing)
    servers: dict[str, ServerRecord] = {}
    for index in range(start, end):
        for record in blocks.get(index, ()):
            if _usable(record, excluded):
                servers.setdefault(record.peer_id, record)
    points = sorted(
        {start, end}
        | {min(max(s.start, start), end) for s in servers.values()}
        | {min(max(s.end, start), end) for s in servers.values()}
    )

    def penalty(record: ServerRecord) -> float:
        cost = BAN_PENALTY if record.peer_id in banned else 0.0
        cost += RELAY_PENALTY if record.relayed else 0.0
        return cost + (NO_CACHE_PENALTY if record.free_cache_tokens < cache_tokens else 0.0)

    best: dict[int, float] = {start: 0.0}
    previous: dict[int, tuple[int, ServerRecord]] = {}
    queue: list[tuple[float, int]] = [(0.0, start)]
    while queue:
        cost, position = heapq.heappop(queue)
        if position == end:
            break
        if cost > best.get(position, float("inf")):
            continue
        for record in servers.values():
            if not record.start <= position < record.end:
                continue
            base = rtts.get(record.peer_id, default_rtt) + penalty(record)
            for point in points:
                if not position < point <= min(record.end, end):
                    continue
                total = cost + base + hop_cost(record, point - position, 0.0)
                if total < best.get(point, float("inf")) - 1e-12:
                    best[point] = total
                    previous[point] = (position, record)
                    heapq.heappush(queue, (total, point))
    route, position = [], end
    while position != start:
        before, record = previous[position]
        route.append(Hop(record.peer_id, before, position, record))
        position = before
    return route[::-1]


def serving_adapter(blocks: Mapping[int, Sequence[ServerRecord]], adapter: str | None) -> dict[int, list[ServerRecord]]:
    """The records of servers that announce LoRA ``adapter``; every record for None (all serve the base model)."""
    if adapter is None:
        return {index: list(records) for index, records in blocks.items()}
    return {index: [record for record in records if adapter in record.adapters] for index, records in blocks.items()}


def precise_enough(blocks: Mapping[int, Sequence[ServerRecord]], minimum: str) -> dict[int, list[ServerRecord]]:
    """The records of servers whose weights are at least as precise as ``minimum`` (none > int8 > nf4)."""
    return {
        index: [record for record in records if at_least(record.quantization, minimum)]
        for index, records in blocks.items()
    }


def _share(record: ServerRecord) -> float:
    """A server's weight in the choice among equivalent ones: its throughput, kept finite and positive whatever a
    record says (weights that sum to inf or NaN make ``random.choices`` raise)."""
    return max(plausible(record.throughput, MAX_THROUGHPUT) or 0.0, 1e-6)


def _usable(record: ServerRecord, excluded: Collection[str]) -> bool:
    return record.state == ServerState.ONLINE and record.peer_id not in excluded
