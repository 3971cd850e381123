"""Block selection and rebalancing as pure functions over a snapshot of the swarm.

A server holds a contiguous span [start, end) of the model's blocks and adds its throughput to every block of it.
The swarm serves at the speed of its weakest block (the *bottleneck*), so a joining server takes the span that
lifts the weakest blocks most, and a running server moves only when that pays for the reload.

Two layers: functions over ``ServerPlacement`` records (what a server reads from the DHT) and the array functions they
call (``best_start``, ``rebalance``), which the simulator calls directly on its per-block totals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Relative tolerance for comparing per-block totals: sums of the same throughputs in another order differ in the
# last bits, and such noise must not decide a tie (ties fall to the lowest start, which keeps choices deterministic).
_REL_TOL = 1e-9


@dataclass(frozen=True)
class ServerPlacement:
    """One server as the swarm sees it: the blocks [start, end) it holds and the throughput it adds to each."""

    peer_id: str
    start: int
    end: int
    throughput: float

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"span of {self.peer_id!r} must satisfy 0 <= start < end, got [{self.start}, {self.end})")
        _check_throughput(self.throughput, f"throughput of {self.peer_id!r}")


@dataclass(frozen=True)
class Move:
    """A decision to move to the span starting at ``start``, with ``reason`` "bottleneck" or "imbalance" (rebalance)."""

    start: int
    reason: str
    old_bottleneck: float  # min over blocks of total throughput with this server staying
    new_bottleneck: float  # the same right after this server moves, the others staying


def block_load(
    starts: np.ndarray, ends: np.ndarray, throughputs: np.ndarray, num_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-block total throughput and number of servers, from span arrays.

    Each block sums its own servers in one fixed order, so blocks held by the same servers get bit-identical totals
    and a block nobody holds gets exactly 0 (a running difference array would leave rounding residue there).
    """
    _check_num_blocks(num_blocks)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    throughputs = np.asarray(throughputs, dtype=np.float64)
    if not (starts.shape == ends.shape == throughputs.shape) or starts.ndim != 1:
        raise ValueError("starts, ends and throughputs must be 1-D arrays of the same length")
    if starts.size and (starts.min() < 0 or ends.max() > num_blocks or np.any(ends <= starts)):
        raise ValueError(f"every span must satisfy 0 <= start < end <= num_blocks={num_blocks}")
    if throughputs.size and not (np.all(np.isfinite(throughputs)) and throughputs.min() >= 0):
        raise ValueError("throughputs must be finite and >= 0")
    blocks = np.arange(num_blocks)
    held = (starts[:, None] <= blocks) & (blocks < ends[:, None])
    totals = np.where(held, throughputs[:, None], 0.0).sum(axis=0)
    return totals, held.sum(axis=0)


def block_throughputs(spans: Sequence[ServerPlacement], num_blocks: int) -> np.ndarray:
    """Total throughput of the swarm at each block (0 where no server holds it)."""
    return _load_of(spans, num_blocks)[0]


def block_coverage(spans: Sequence[ServerPlacement], num_blocks: int) -> np.ndarray:
    """Number of servers holding each block."""
    return _load_of(spans, num_blocks)[1]


def best_start(totals: np.ndarray, span_length: int, throughput: float) -> int:
    """Start of the span of ``span_length`` blocks that, with ``throughput`` added, lifts the weakest blocks most.

    Rule, in order: (1) maximize the swarm's minimum per-block throughput after adding this server; (2) among ties,
    take the span whose covered blocks, sorted ascending, are lexicographically smallest, i.e. the most under-served
    span (it covers the most uncovered blocks, then the weakest ones); (3) among ties, the lowest start.
    """
    totals = _as_totals(totals)
    _check_span_length(span_length, totals.size)
    _check_throughput(throughput, "throughput")
    tol = _tolerance(totals, throughput)
    num_starts = totals.size - span_length + 1
    windows = sliding_window_view(totals, span_length)
    # Minimum after adding the server at start s = min(blocks before s, blocks after the span, span min + throughput).
    before = np.full(num_starts, np.inf)
    before[1:] = np.minimum.accumulate(totals)[: num_starts - 1]
    after = np.full(num_starts, np.inf)
    after[:-1] = np.minimum.accumulate(totals[::-1])[::-1][span_length:]
    resulting = np.minimum(np.minimum(before, after), windows.min(axis=1) + throughput)
    candidates = np.flatnonzero(resulting >= resulting.max() - tol)
    if candidates.size == 1:
        return int(candidates[0])
    covered = np.sort(windows[candidates], axis=1)
    for column in range(span_length):
        values = covered[:, column]
        keep = values <= values.min() + tol
        candidates, covered = candidates[keep], covered[keep]
        if candidates.size == 1:
            break
    return int(candidates[0])


def choose_best_span(spans: Sequence[ServerPlacement], num_blocks: int, span_length: int, throughput: float) -> int:
    """Start index for a joining server: the most under-served span of ``span_length`` blocks (see best_start).

    ``spans`` should include servers that are still joining, so that concurrent joiners spread out.
    """
    return best_start(block_throughputs(spans, num_blocks), span_length, throughput)


def rebalance(
    totals: np.ndarray, coverage: np.ndarray, start: int, end: int, throughput: float, balance_quality: float
) -> Move | None:
    """Decide whether the server holding [start, end) with ``throughput`` should move, from per-block totals.

    ``totals`` and ``coverage`` include this server. With q = balance_quality, old = min(totals) and ``new`` the
    minimum after this server moves alone to its best span (best_start over the swarm without it):

    - never move if some block it would leave (in [start, end) but not in the new span) has no other server;
      blocks that the new span keeps may be its alone, so a server can shift towards a gap next to it;
    - stay if the best span is the current one, or if the move does not raise the weakest block it touches
      (min over old and new span before vs after): every move then strictly raises the sorted vector of block
      totals, so a swarm without churn settles after finitely many moves instead of oscillating;
    - move ("bottleneck") if new * q > old: this move alone raises the bottleneck by the factor 1 / q;
    - move ("imbalance") if mean(totals) * q > old: the bottleneck is below q times the mean per-block throughput,
      which is the most that all servers moving together could reach. One server rarely lifts the bottleneck of a
      large swarm by itself, so this greedy rule lets each server that checks make its locally improving move;
      taken one at a time, these moves are the "others move too" of a swarm that is out of balance.
    """
    totals = _as_totals(totals)
    coverage = np.asarray(coverage)
    if coverage.shape != totals.shape:
        raise ValueError("coverage must have one entry per block, like totals")
    _check_span_length(end - start, totals.size)
    if start < 0 or end > totals.size:
        raise ValueError(f"span [{start}, {end}) is outside the model's {totals.size} blocks")
    _check_throughput(throughput, "throughput")
    if not (0.0 < balance_quality <= 1.0):
        raise ValueError(f"balance_quality must be in (0, 1], got {balance_quality}")
    old = float(totals.min())
    imbalanced = float(totals.mean()) * balance_quality > old
    # The minimum after moving is at most old + throughput, so a direct gain is impossible below this line.
    if not imbalanced and (old + throughput) * balance_quality <= old:
        return None
    rest = totals.copy()
    rest[start:end] -= throughput
    np.maximum(rest, 0.0, out=rest)  # rounding may leave -1e-17 where this server was the rest's only throughput
    span_length = end - start
    new_start = best_start(rest, span_length, throughput)
    if new_start == start:
        return None
    held = np.arange(start, end)
    left = held[(held < new_start) | (held >= new_start + span_length)]
    if coverage[left].min() <= 1:
        return None  # leaving would uncover a block
    moved = rest.copy()
    moved[new_start : new_start + span_length] += throughput
    touched_before = min(totals[start:end].min(), totals[new_start : new_start + span_length].min())
    touched_after = min(moved[start:end].min(), moved[new_start : new_start + span_length].min())
    if touched_after <= touched_before + _tolerance(totals, throughput):
        return None
    new = float(moved.min())
    if new * balance_quality > old:
        return Move(start=new_start, reason="bottleneck", old_bottleneck=old, new_bottleneck=new)
    if imbalanced:
        return Move(start=new_start, reason="imbalance", old_bottleneck=old, new_bottleneck=new)
    return None


def should_move(
    spans: Sequence[ServerPlacement], num_blocks: int, my_peer_id: str, balance_quality: float
) -> Move | None:
    """Rebalancing decision for the server ``my_peer_id`` over the swarm ``spans`` (which includes it).

    Returns where to move and why, or None to stay; the rule is documented on ``rebalance``.
    """
    mine = [span for span in spans if span.peer_id == my_peer_id]
    if len(mine) != 1:
        raise ValueError(f"spans must hold exactly one record of {my_peer_id!r}, found {len(mine)}")
    totals, coverage = _load_of(spans, num_blocks)
    me = mine[0]
    return rebalance(totals, coverage, me.start, me.end, me.throughput, balance_quality)


def join_delay(rng: np.random.Generator, max_delay_s: float) -> float:
    """Seconds a starting server waits before choosing its span, uniform in [0, max_delay_s).

    Servers that start together (a lab booting, a swarm restarting) would all read the same snapshot and pick the
    same span; a random wait spreads their choices, so each sees the others' "joining" records first.
    """
    if not (math.isfinite(max_delay_s) and max_delay_s >= 0):
        raise ValueError(f"max_delay_s must be finite and >= 0, got {max_delay_s}")
    return float(rng.uniform(0.0, max_delay_s)) if max_delay_s > 0 else 0.0


def _load_of(spans: Sequence[ServerPlacement], num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    count = len(spans)
    starts = np.fromiter((span.start for span in spans), dtype=np.int64, count=count)
    ends = np.fromiter((span.end for span in spans), dtype=np.int64, count=count)
    throughputs = np.fromiter((span.throughput for span in spans), dtype=np.float64, count=count)
    return block_load(starts, ends, throughputs, num_blocks)


def _as_totals(totals: np.ndarray) -> np.ndarray:
    totals = np.asarray(totals, dtype=np.float64)
    if totals.ndim != 1 or totals.size == 0:
        raise ValueError("totals must be a non-empty 1-D array with one entry per block")
    return totals


def _tolerance(totals: np.ndarray, throughput: float) -> float:
    return _REL_TOL * max(float(np.abs(totals).max()), throughput)


def _check_num_blocks(num_blocks: int) -> None:
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")


def _check_span_length(span_length: int, num_blocks: int) -> None:
    if not (1 <= span_length <= num_blocks):
        raise ValueError(f"span_length must be in [1, num_blocks={num_blocks}], got {span_length}")


def _check_throughput(throughput: float, what: str) -> None:
    if not (math.isfinite(throughput) and throughput >= 0):
        raise ValueError(f"{what} must be finite and >= 0, got {throughput}")
