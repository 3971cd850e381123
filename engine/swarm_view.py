"""What the swarm looks like now: per block, the servers holding it and their total throughput; per server, its spans.

``build_view`` is a pure function of DHT records (the CLI's ``nectar swarm`` and, later, the GUI's coverage plot
both use it); ``read_view`` reads the records through a client connection. Throughput totals count online
servers only, since only they take requests; joining and draining servers are listed with their state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from engine.records import ServerRecord, ServerState


@dataclass(frozen=True)
class ServerRow:
    """One span a server announces (a server that is moving announces two for a while)."""

    peer_id: str
    start: int
    end: int
    state: str
    throughput: float
    inference_rps: float
    free_cache_tokens: int
    dtype: str
    quantization: str
    version: str


@dataclass(frozen=True)
class BlockView:
    index: int
    servers: tuple[str, ...]  # peer ids of online servers holding the block
    others: tuple[str, ...]  # peer ids of joining or draining servers announced on the block
    throughput: float  # total throughput of the online servers, tokens/s


@dataclass(frozen=True)
class SwarmView:
    prefix: str
    num_blocks: int
    blocks: tuple[BlockView, ...]
    spans: tuple[ServerRow, ...]

    @property
    def uncovered(self) -> list[int]:
        return [block.index for block in self.blocks if not block.servers]

    @property
    def bottleneck(self) -> float:
        return min((block.throughput for block in self.blocks), default=0.0)

    @property
    def num_servers(self) -> int:
        return len({span.peer_id for span in self.spans})

    def to_dict(self) -> dict:
        return {
            "dht_prefix": self.prefix,
            "num_blocks": self.num_blocks,
            "num_servers": self.num_servers,
            "bottleneck_throughput": self.bottleneck,
            "uncovered_blocks": self.uncovered,
            "blocks": [
                {**asdict(block), "servers": list(block.servers), "others": list(block.others)} for block in self.blocks
            ],
            "servers": [asdict(span) for span in self.spans],
        }


def build_view(prefix: str, num_blocks: int, blocks: Mapping[int, Sequence[ServerRecord]]) -> SwarmView:
    """The view of ``num_blocks`` blocks from their records (as ``records.read_blocks`` returns them)."""
    if num_blocks < 1:
        raise ValueError(f"the number of blocks must be at least 1, got {num_blocks}")
    rows, spans = [], {}
    for index in range(num_blocks):
        held = blocks.get(index, ())
        online = sorted((record for record in held if record.state == ServerState.ONLINE), key=lambda r: r.peer_id)
        others = sorted(record.peer_id for record in held if record.state != ServerState.ONLINE)
        rows.append(
            BlockView(index, tuple(r.peer_id for r in online), tuple(others), sum(r.throughput for r in online))
        )
        for record in held:
            spans.setdefault((record.peer_id, record.start, record.end), _server_row(record))
    ordered = sorted(spans.values(), key=lambda span: (span.start, span.end, span.peer_id))
    return SwarmView(prefix, num_blocks, tuple(rows), tuple(ordered))


def _server_row(record: ServerRecord) -> ServerRow:
    return ServerRow(
        peer_id=record.peer_id,
        start=record.start,
        end=record.end,
        state=str(record.state),
        throughput=float(record.throughput),
        inference_rps=float(record.inference_rps),
        free_cache_tokens=int(record.free_cache_tokens),
        dtype=record.dtype,
        quantization=record.quantization,
        version=record.version,
    )


def short(peer_id: str) -> str:
    """The last 8 characters of a peer id: what logs and tables show (base58 ids share their first characters)."""
    return peer_id[-8:]


def format_view(view: SwarmView) -> str:
    """A plain-text table: a summary line, one row per block, then one row per server span."""
    coverage = (
        "all blocks covered"
        if not view.uncovered
        else f"{len(view.uncovered)} block(s) uncovered: {', '.join(map(str, view.uncovered))}"
    )
    lines = [
        f"swarm {view.prefix}: {view.num_blocks} blocks, {view.num_servers} servers, "
        f"bottleneck {view.bottleneck:.1f} tokens/s, {coverage}",
        "",
        f"{'block':>5}  {'tokens/s':>9}  servers",
    ]
    for block in view.blocks:
        names = [short(peer) for peer in block.servers] + [f"({short(peer)})" for peer in block.others]
        lines.append(f"{block.index:>5}  {block.throughput:>9.1f}  {' '.join(names) or '-- uncovered --'}")
    lines += [
        "",
        f"{'server':<8}  {'blocks':>7}  {'state':<8}  {'tokens/s':>9}  {'steps/s':>8}  {'free cache':>10}  dtype",
    ]
    for span in view.spans:
        blocks = f"{span.start}:{span.end}"
        lines.append(
            f"{short(span.peer_id):<8}  {blocks:>7}  {span.state:<8}  {span.throughput:>9.1f}  "
            f"{span.inference_rps:>8.1f}  {span.free_cache_tokens:>10}  {span.dtype}"
        )
    lines.append("(parenthesized: joining or draining, not counted in tokens/s)")
    return "\n".join(lines)


def read_view(
    initial_peers: Sequence[str], prefix: str, num_blocks: int, timeout: float = 60.0, swarm_key: str | None = None
) -> SwarmView:
    """Connect as a client (to a private swarm with the key file ``swarm_key``), read every block's records once,
    and build the view."""
    from engine.client.config import ClientSettings  # the network stack only when a view is read
    from engine.client.swarm import SwarmConnection

    with SwarmConnection(initial_peers, prefix, settings=ClientSettings(swarm_key=swarm_key)) as swarm:
        blocks = swarm.run(swarm.read_blocks(0, num_blocks), timeout=timeout)
    return build_view(prefix, num_blocks, blocks)
