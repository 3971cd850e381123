"""The swarm's DHT records: what a server announces for each block it holds, and how clients read them.

Each block ``i`` of a model has the DHT key ``{prefix}.{i}``; under it every server holding the block stores
a record in its own subkey (its peer id), with an expiry. A server refreshes its records periodically and
stores ``offline`` when it stops, so clients forget it at once instead of when the record expires.
Records are validated when read and unknown fields are ignored, so peers of different versions mix. Every DHT
node also checks that each record is signed by the peer it names (``engine.signed_records``): the DHT node of a
server signs what ``announce`` stores with the server's identity key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "0.1.0"
_TEXT_FIELDS = ("peer_id", "dtype", "quantization", "version")

# The most a record may claim; larger claims are clipped to these. No server comes near them (a fast GPU on a tiny
# model does ~1e5 tokens/s), and capped numbers keep every sum of them finite: one record announcing 1e308 tokens/s
# cannot take all traffic, and two cannot make a weighted choice overflow.
MAX_THROUGHPUT = 1e6  # tokens/s per block
MAX_INFERENCE_RPS = 1e5  # one-token steps/s per block
MAX_CACHE_TOKENS = 2**31  # free attention-cache tokens; also the largest max_request_tokens
_LIMITS = {
    "throughput": MAX_THROUGHPUT,
    "inference_rps": MAX_INFERENCE_RPS,
    "free_cache_tokens": MAX_CACHE_TOKENS,
    "max_request_tokens": MAX_CACHE_TOKENS,
}


def plausible(value: Any, limit: float) -> float | None:
    """``value`` as a number in [0, limit] (larger ones clipped), or None for NaN, negatives and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
        return None
    return min(float(value), float(limit))


class ServerState(StrEnum):
    JOINING = "joining"
    ONLINE = "online"
    DRAINING = "draining"
    OFFLINE = "offline"


@dataclass(frozen=True)
class ServerRecord:
    """One server's announcement, identical for every block of its span."""

    peer_id: str
    start: int
    end: int
    state: ServerState
    throughput: float = 1.0  # tokens/s the server adds to each block it holds (forward, bulk)
    inference_rps: float = 1.0  # one-token inference steps/s through one block
    free_cache_tokens: int = 0  # attention-cache tokens still free on this server
    max_request_tokens: int = 8192  # batch * tokens a single forward/backward request may carry
    dtype: str = "float32"
    quantization: str = "none"
    version: str = PROTOCOL_VERSION
    adapters: tuple[str, ...] = field(default_factory=tuple)
    # where peers dial it: its checked public addresses, or circuit addresses through relays; () = ask libp2p
    maddrs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def relayed(self) -> bool:
        """Reached only through relays: an extra hop, and a relay's bandwidth shared with others."""
        return bool(self.maddrs) and all("/p2p-circuit" in maddr for maddr in self.maddrs)

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["state"] = self.state.value
        record["adapters"] = list(self.adapters)
        record["maddrs"] = list(self.maddrs)
        return record

    @classmethod
    def from_dict(cls, raw: Any) -> ServerRecord | None:
        """A validated record, or None for a malformed one (a lying or broken peer must not break clients).

        Numbers past the plausible limits are clipped to them; NaN, negative or non-numeric ones drop the record.
        """
        if not isinstance(raw, dict):
            return None
        known = {item.name for item in dataclasses.fields(cls)}
        values = {key: value for key, value in raw.items() if key in known}
        try:
            values["state"] = ServerState(values["state"])
            values["adapters"] = tuple(str(name) for name in values.get("adapters", ()))
            for name in ("free_cache_tokens", "max_request_tokens"):
                if name in values and not isinstance(values[name], int):
                    return None  # a float here would be a count that is not one
            for name, limit in _LIMITS.items():
                if name in values:
                    value = plausible(values[name], limit)
                    if value is None:
                        return None
                    values[name] = value if name in ("throughput", "inference_rps") else int(value)
            values["maddrs"] = tuple(str(maddr) for maddr in values.get("maddrs", ()))
            record = cls(**values)
            if not (isinstance(record.start, int) and isinstance(record.end, int) and 0 <= record.start < record.end):
                return None
            if not all(isinstance(getattr(record, name), str) for name in _TEXT_FIELDS):
                return None
            if record.max_request_tokens < 1:
                return None
        except (KeyError, TypeError, ValueError):
            return None
        return record


def default_dht_prefix(model: str) -> str:
    """The swarm name clients and servers agree on when none is given: the alias or the file/directory name."""
    name = os.path.basename(os.path.normpath(model))
    return name.removesuffix(".gguf").replace(".", "-")


def block_key(prefix: str, index: int) -> str:
    return f"{prefix}.{index}"


async def announce(
    node: DHTNode, prefix: str, record: ServerRecord, expiration_s: float, blocks: Sequence[int] | None = None
) -> None:
    """Store ``record`` under every block of its span (or just ``blocks``) until ``expiration_s`` from now."""
    blocks = range(record.start, record.end) if blocks is None else blocks
    expiration = get_dht_time() + expiration_s
    stored = await node.store_many(
        keys=[block_key(prefix, index) for index in blocks],
        values=[record.to_dict()] * len(blocks),
        expiration_time=expiration,
        subkeys=[record.peer_id] * len(blocks),
    )
    failed = [key for key, ok in stored.items() if not ok]
    if failed:
        logger.debug("could not store %d of %d block records", len(failed), len(blocks))


async def read_blocks(node: DHTNode, prefix: str, blocks: Iterable[int]) -> dict[int, list[ServerRecord]]:
    """The current records of each block, read afresh from the DHT (no cached answers); offline ones dropped."""
    indices = list(blocks)
    keys = [block_key(prefix, index) for index in indices]
    found = await node.get_many(keys, sufficient_expiration_time=float("inf"))  # latest, not cached
    result: dict[int, list[ServerRecord]] = {}
    for index, key in zip(indices, keys, strict=True):
        entry = found.get(key)
        records = []
        if entry is not None and isinstance(entry.value, dict):
            for subkey, item in entry.value.items():
                record = ServerRecord.from_dict(item.value)
                if record is None or record.peer_id != subkey or not record.start <= index < record.end:
                    continue
                if record.state != ServerState.OFFLINE:
                    records.append(record)
        result[index] = records
    return result


def spans_of(blocks: dict[int, Sequence[ServerRecord]]) -> dict[str, ServerRecord]:
    """One record per server, from the per-block view."""
    servers: dict[str, ServerRecord] = {}
    for records in blocks.values():
        for record in records:
            servers.setdefault(record.peer_id, record)
    return servers
