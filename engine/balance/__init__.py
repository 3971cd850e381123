"""Block selection and rebalancing for servers of a swarm, and a simulator that exercises them at scale.

Map of the package:
- ``selection.py``: pure functions over a snapshot of the swarm. ``ServerPlacement`` (one server's span and
  throughput), ``block_throughputs`` / ``block_coverage`` / ``block_load`` (per-block totals), ``choose_best_span`` and
  ``best_start`` (where a joining server goes), ``should_move`` and ``rebalance`` (whether a running server moves,
  returning a ``Move``), ``join_delay`` (random wait that spreads concurrent joins).
- ``simulator.py``: ``SwarmConfig``, ``simulate`` (thousands of servers joining, leaving and rebalancing with the
  functions above, under the policies in ``POLICIES``) and ``SwarmRun`` (what a run recorded and its summaries).

The benchmark ``benchmarks/balance_simulator.py`` prints the simulator's comparison of policies.
"""

from engine.balance.selection import (
    Move,
    ServerPlacement,
    best_start,
    block_coverage,
    block_load,
    block_throughputs,
    choose_best_span,
    join_delay,
    rebalance,
    should_move,
)
from engine.balance.simulator import POLICIES, SwarmConfig, SwarmRun, simulate

__all__ = [
    "POLICIES",
    "Move",
    "ServerPlacement",
    "SwarmConfig",
    "SwarmRun",
    "best_start",
    "block_coverage",
    "block_load",
    "block_throughputs",
    "choose_best_span",
    "join_delay",
    "rebalance",
    "should_move",
    "simulate",
]
