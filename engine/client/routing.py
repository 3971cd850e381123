"""Choosing the chain of servers that covers a range of blocks."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from engine.records import ServerRecord, ServerState


class MissingBlocksError(RuntimeError):
    """No reachable server holds some blocks; the message names them."""

    def __init__(self, blocks: Sequence[int]):
        super().__init__(f"no available server holds block(s) {format_blocks(blocks)}")
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
    missing = [
        index for index in range(start, end) if not any(_usable(record, banned) for record in blocks.get(index, ()))
    ]
    if missing:
        raise MissingBlocksError(missing)
    route, position = [], start
    while position < end:
        candidates = [record for record in blocks[position] if _usable(record, banned)]
        reach = max(min(record.end, end) for record in candidates)
        farthest = [record for record in candidates if min(record.end, end) == reach]
        chosen = rng.choices(farthest, weights=[max(record.throughput, 1e-6) for record in farthest])[0]
        route.append(Hop(chosen.peer_id, position, reach, chosen))
        position = reach
    return route


def _usable(record: ServerRecord, banned: Collection[str]) -> bool:
    return record.state == ServerState.ONLINE and record.peer_id not in banned
