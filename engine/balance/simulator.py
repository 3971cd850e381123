"""A time-stepped swarm simulator that runs the real selection functions on thousands of simulated servers.

Servers arrive (a cold start of ``num_servers`` at t=0, then Poisson arrivals that keep the population steady),
live for an exponential time and leave without notice. Each one draws a heavy-tailed throughput (log-normal:
consumer GPUs to A100s) and, correlated with it, how many blocks its memory holds. A joining server waits
``join_delay``, picks a span, then loads it for a while before it serves; while loading it is already announced,
so others' choices count it (as Petals counts "joining" servers). Under the "balanced" policy each serving server
also calls ``rebalance`` at exponential intervals and reloads when it moves.

Measured at every step, on serving servers only: the bottleneck (min over blocks of total throughput), whether
some block is uncovered, and an upper bound on the bottleneck:

    bound = sum_i throughput_i * span_length_i / num_blocks   over servers that could serve now

(serving ones and ones reloading after a move; not newcomers, which have nothing loaded yet). It is an upper bound
because the bottleneck is the minimum of the per-block totals, a minimum is at most their mean, and the totals sum
to sum_i throughput_i * span_length_i whatever the spans are. It is the value of the relaxation where a server may
spread its throughput over blocks fractionally, and it is nearly tight when many servers share each block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engine.balance.selection import best_start, block_load, join_delay, rebalance

POLICIES = ("balanced", "join-only", "random")  # join-only: best_start on join, never rebalance

_WAITING, _LOADING, _SERVING, _GONE = 0, 1, 2, 3


@dataclass(frozen=True)
class SwarmConfig:
    """One simulated swarm; the defaults are the benchmark's (2000 servers, a model of 80 blocks, 24 hours)."""

    num_servers: int = 2000  # servers alive on average (cold start at t=0, then arrivals at the departure rate)
    num_blocks: int = 80
    hours: float = 24.0
    step_s: float = 30.0  # time step; events inside a step are handled at its end, in time order
    mean_lifetime_h: float = 3.0  # volunteers come and go: exponential lifetimes
    diurnal_amplitude: float = 0.0  # arrival rate * (1 + a * sin(2 pi t / 24 h)); 0 = steady Poisson arrivals
    check_period_s: float = 120.0  # mean time between two rebalancing checks of one server (as in Petals)
    balance_quality: float = 0.75
    max_join_delay_s: float = 120.0
    throughput_median: float = 1.0  # per-block throughput of a median server (any unit: requests/s, tokens/s)
    throughput_sigma: float = 0.8  # log-normal spread: the top of 2000 servers is ~15x the median
    blocks_median: float = 12.0  # span length of a median server, correlated with throughput (bigger GPUs)
    min_blocks: int = 4
    max_blocks: int = 40
    load_base_s: float = 60.0  # time to start serving a new span: startup plus a per-block weight load
    load_per_block_s: float = 10.0
    unbalanced_start: bool = False  # the t=0 servers take random spans (held by hand, an old client) under any policy
    seed: int = 0


@dataclass
class SwarmRun:
    """What one run recorded, one entry per time step."""

    policy: str
    config: SwarmConfig
    times_h: np.ndarray
    bottleneck: np.ndarray
    bound: np.ndarray
    uncovered: np.ndarray  # True where some block had no serving server
    alive: np.ndarray  # servers alive (loading or serving)
    moves: np.ndarray  # moves made during each step
    wall_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def _steady(self) -> np.ndarray:
        return self.times_h >= self.config.hours / 2

    def steady_ratio(self) -> float:
        """Median of bottleneck / bound over the second half of the run."""
        steady = self._steady() & (self.bound > 0)
        return float(np.median(self.bottleneck[steady] / self.bound[steady]))

    def uncovered_fraction(self) -> float:
        """Fraction of the second half during which some block had no serving server."""
        return float(self.uncovered[self._steady()].mean())

    def moves_per_server_hour(self, whole_run: bool = False) -> float:
        """Moves divided by the server-hours lived, over the second half (or the whole run)."""
        span = np.ones_like(self.times_h, dtype=bool) if whole_run else self._steady()
        server_hours = self.alive[span].sum() * self.config.step_s / 3600
        return float(self.moves[span].sum() / server_hours) if server_hours > 0 else 0.0


@dataclass
class _Population:
    """Every server that will ever arrive, drawn up front so that all policies see the same swarm."""

    arrival_s: np.ndarray
    decide_s: np.ndarray  # arrival plus join delay
    death_s: np.ndarray
    throughput: np.ndarray
    length: np.ndarray


def _draw_population(config: SwarmConfig) -> _Population:
    rng = np.random.default_rng(config.seed)
    horizon_s = config.hours * 3600
    lifetime_s = config.mean_lifetime_h * 3600
    # Arrivals at the departure rate of num_servers; a daily cycle by thinning a process at the peak rate.
    peak = 1.0 + config.diurnal_amplitude
    proposals = np.sort(rng.uniform(0, horizon_s, rng.poisson(peak * config.num_servers * horizon_s / lifetime_s)))
    rate = 1.0 + config.diurnal_amplitude * np.sin(2 * np.pi * proposals / 86400)
    later = proposals[rng.uniform(0, peak, proposals.size) < rate]
    arrival = np.concatenate([np.zeros(config.num_servers), later])
    count = arrival.size
    # One latent "how big a GPU" drives both speed and memory; 0.9^2 + 0.44^2 ~ 1 keeps the log-spread at sigma.
    size = rng.standard_normal(count)
    throughput = config.throughput_median * np.exp(
        config.throughput_sigma * (0.9 * size + 0.44 * rng.standard_normal(count))
    )
    raw_length = config.blocks_median * np.exp(0.5 * size + 0.25 * rng.standard_normal(count))
    longest = min(config.max_blocks, config.num_blocks)
    length = np.clip(np.rint(raw_length), min(config.min_blocks, longest), longest)
    delays = np.array([join_delay(rng, config.max_join_delay_s) for _ in range(count)])
    death = arrival + rng.exponential(lifetime_s, count)
    return _Population(arrival, arrival + delays, death, throughput, length.astype(np.int64))


def simulate(config: SwarmConfig, policy: str = "balanced") -> SwarmRun:
    """Run one policy on the swarm that ``config`` describes; deterministic for a given config."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    _check_config(config)
    began = time.perf_counter()
    swarm = _Swarm(config, policy)
    steps = int(np.ceil(config.hours * 3600 / config.step_s))
    record = {name: np.zeros(steps) for name in ("times_h", "bottleneck", "bound", "alive", "moves")}
    uncovered = np.zeros(steps, dtype=bool)
    for step in range(steps):
        now = (step + 1) * config.step_s
        swarm.refresh_totals()
        swarm.depart(now)
        swarm.join(now)
        swarm.finish_loading(now)
        record["moves"][step] = swarm.check(now) if policy == "balanced" else 0
        record["times_h"][step] = now / 3600
        record["bottleneck"][step] = swarm.served.min()
        record["bound"][step] = swarm.bound()
        record["alive"][step] = np.count_nonzero((swarm.state == _LOADING) | (swarm.state == _SERVING))
        uncovered[step] = swarm.served_count.min() == 0
    wall_s = time.perf_counter() - began
    return SwarmRun(policy, config, uncovered=uncovered, wall_s=wall_s, reasons=swarm.reasons, **record)


class _Swarm:
    """The servers' states plus two views of the per-block load: announced (what choices see) and served."""

    def __init__(self, config: SwarmConfig, policy: str) -> None:
        self.config, self.policy = config, policy
        self.pop = _draw_population(config)
        self.rng = np.random.default_rng([config.seed, POLICIES.index(policy)])
        count = self.pop.arrival_s.size
        self.state = np.full(count, _WAITING)
        self.moving = np.zeros(count, dtype=bool)  # loading a new span after a move (it had one to serve)
        self.start = np.zeros(count, dtype=np.int64)
        self.ready_s = np.full(count, np.inf)
        self.check_s = np.full(count, np.inf)
        self.reasons: dict[str, int] = {}

    def refresh_totals(self) -> None:
        """Recompute both views from scratch, so in-step updates never accumulate rounding drift."""
        placed = (self.state == _LOADING) | (self.state == _SERVING)
        self.announced, self.announced_count = self._load(placed)
        self.served, self.served_count = self._load(self.state == _SERVING)

    def depart(self, now: float) -> None:
        for i in np.flatnonzero((self.state != _GONE) & (self.pop.death_s <= now)):
            if self.state[i] in (_LOADING, _SERVING):
                self._add(i, announced=-1)
            if self.state[i] == _SERVING:
                self._add(i, served=-1)
            self.state[i] = _GONE

    def join(self, now: float) -> None:
        """Servers whose join delay is over pick a span, in the order they became ready, and start loading."""
        joining = np.flatnonzero((self.state == _WAITING) & (self.pop.decide_s <= now))
        for i in joining[np.argsort(self.pop.decide_s[joining], kind="stable")]:
            length = int(self.pop.length[i])
            if self.policy == "random" or (self.config.unbalanced_start and self.pop.arrival_s[i] == 0):
                self.start[i] = self.rng.integers(0, self.config.num_blocks - length + 1)
            else:
                self.start[i] = best_start(self.announced, length, float(self.pop.throughput[i]))
            self._add(i, announced=+1)
            self._begin_loading(i, now)

    def finish_loading(self, now: float) -> None:
        for i in np.flatnonzero((self.state == _LOADING) & (self.ready_s <= now)):
            self._add(i, served=+1)
            self.state[i], self.moving[i] = _SERVING, False
            self.check_s[i] = now + self.rng.exponential(self.config.check_period_s)

    def check(self, now: float) -> int:
        """Serving servers whose check is due call ``rebalance``, in time order; returns how many moved."""
        moves = 0
        due = np.flatnonzero((self.state == _SERVING) & (self.check_s <= now))
        for i in due[np.argsort(self.check_s[due], kind="stable")]:
            self.check_s[i] = now + self.rng.exponential(self.config.check_period_s)
            begin, throughput = int(self.start[i]), float(self.pop.throughput[i])
            end = begin + int(self.pop.length[i])
            move = rebalance(self.announced, self.announced_count, begin, end, throughput, self.config.balance_quality)
            if move is None:
                continue
            self._add(i, announced=-1, served=-1)
            self.start[i] = move.start
            self._add(i, announced=+1)
            self._begin_loading(i, now)
            self.moving[i] = True
            self.reasons[move.reason] = self.reasons.get(move.reason, 0) + 1
            moves += 1
        return moves

    def bound(self) -> float:
        """The fractional upper bound (module docstring) over servers that could serve now."""
        could_serve = (self.state == _SERVING) | ((self.state == _LOADING) & self.moving)
        weight = self.pop.throughput[could_serve] * self.pop.length[could_serve]
        return float(weight.sum() / self.config.num_blocks)

    def _begin_loading(self, i: int, now: float) -> None:
        self.state[i] = _LOADING
        self.ready_s[i] = now + self.config.load_base_s + self.config.load_per_block_s * self.pop.length[i]

    def _load(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-block totals and server counts of the servers in ``mask``, through the function a server uses."""
        begin = self.start[mask]
        return block_load(begin, begin + self.pop.length[mask], self.pop.throughput[mask], self.config.num_blocks)

    def _add(self, i: int, announced: int = 0, served: int = 0) -> None:
        """Add (+1) or remove (-1) server i at its current span in either view, in place."""
        span = slice(int(self.start[i]), int(self.start[i] + self.pop.length[i]))
        for sign, totals, counts in (
            (announced, self.announced, self.announced_count),
            (served, self.served, self.served_count),
        ):
            if sign:
                totals[span] += sign * self.pop.throughput[i]
                counts[span] += sign


def _check_config(config: SwarmConfig) -> None:
    positive = ("num_servers", "num_blocks", "hours", "step_s", "mean_lifetime_h", "check_period_s", "min_blocks")
    for name in positive:
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")
    if config.max_blocks < config.min_blocks:
        raise ValueError(f"max_blocks ({config.max_blocks}) must be >= min_blocks ({config.min_blocks})")
    if not 0 <= config.diurnal_amplitude <= 1:
        raise ValueError(f"diurnal_amplitude must be in [0, 1], got {config.diurnal_amplitude}")
