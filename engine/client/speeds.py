"""What a client measured of each server's speed, and the announced numbers it trusts because of it.

A record's throughput is the server's own claim. Routing shares traffic by it, so a server that claims more than it
delivers would take more than its share (and slow every client that lands on it). Once the client has timed a
forward on a server, routing uses the smaller of the claim and the measurement, so a server much slower than it
says loses its share. Every measured server is judged by what it delivered, network included, which is what a
client gets from it; servers not measured yet keep their claim, are routed to, and are measured then.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from engine.records import ServerRecord

# Requests with fewer tokens than this measure round trips rather than compute: they are not counted.
MIN_MEASURED_TOKENS = 16
SMOOTHING = 0.3  # weight of a new sample in the moving average


class SpeedBook:
    """Smoothed measured throughput per server, in the records' unit: tokens/s added to each block of its span."""

    def __init__(self) -> None:
        self.measured: dict[str, float] = {}

    def observe(self, record: ServerRecord, tokens: int, num_blocks: int, seconds: float) -> None:
        """Count one forward of ``tokens`` tokens through ``num_blocks`` of ``record``'s blocks in ``seconds``.

        A server of throughput R runs k of its m blocks over T tokens in T * k / (m * R) seconds, so R = T k / (m s).
        """
        span = record.end - record.start
        if tokens < MIN_MEASURED_TOKENS or num_blocks < 1 or span < 1 or not (seconds > 0 and math.isfinite(seconds)):
            return
        sample = tokens * num_blocks / (span * seconds)
        old = self.measured.get(record.peer_id)
        self.measured[record.peer_id] = sample if old is None else (1 - SMOOTHING) * old + SMOOTHING * sample

    def trusted(self, record: ServerRecord) -> ServerRecord:
        """``record`` with its claims capped by what was measured (unchanged for servers not measured yet).

        The throughput becomes min(announced, measured), and the inference speed shrinks by the same factor: a
        server that overstates one number is assumed to overstate the other as much.
        """
        measured = self.measured.get(record.peer_id)
        if measured is None or record.throughput <= measured:
            return record
        scale = measured / record.throughput
        return dataclasses.replace(record, throughput=measured, inference_rps=record.inference_rps * scale)

    def trusted_blocks(self, blocks: Mapping[int, Sequence[ServerRecord]]) -> dict[int, list[ServerRecord]]:
        return {index: [self.trusted(record) for record in records] for index, records in blocks.items()}
