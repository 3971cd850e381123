"""Block selection and rebalancing on hand-made swarms, plus a small run of the simulator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine.balance import (
    Move,
    ServerPlacement,
    SwarmConfig,
    best_start,
    block_coverage,
    block_throughputs,
    choose_best_span,
    join_delay,
    rebalance,
    should_move,
    simulate,
)


def span(peer: str, start: int, end: int, throughput: float = 1.0) -> ServerPlacement:
    return ServerPlacement(peer_id=peer, start=start, end=end, throughput=throughput)


def test_block_totals_and_coverage() -> None:
    spans = [span("a", 0, 3, 2.0), span("b", 2, 5, 1.5)]
    np.testing.assert_allclose(block_throughputs(spans, 6), [2.0, 2.0, 3.5, 1.5, 1.5, 0.0])
    np.testing.assert_array_equal(block_coverage(spans, 6), [1, 1, 2, 1, 1, 0])
    np.testing.assert_array_equal(block_throughputs([], 3), [0.0, 0.0, 0.0])


def test_empty_swarm_starts_at_block_zero() -> None:
    assert choose_best_span([], num_blocks=80, span_length=10, throughput=5.0) == 0
    assert choose_best_span([], num_blocks=80, span_length=80, throughput=5.0) == 0


def test_fills_the_uncovered_gap() -> None:
    spans = [span("a", 0, 10), span("b", 14, 20)]
    assert choose_best_span(spans, num_blocks=20, span_length=4, throughput=1.0) == 10


def test_covers_as_much_of_a_wide_gap_as_it_can() -> None:
    spans = [span("a", 0, 5, 9.0), span("b", 12, 20, 9.0)]
    start = choose_best_span(spans, num_blocks=20, span_length=4, throughput=1.0)
    assert start == 5  # all four blocks in the gap [5, 12); the lowest such start on ties


def test_prefers_the_weakest_blocks() -> None:
    spans = [span("a", 0, 2, 5.0), span("b", 2, 4, 1.0), span("c", 4, 6, 5.0), span("d", 0, 6, 1.0)]
    assert choose_best_span(spans, num_blocks=6, span_length=2, throughput=1.0) == 2


def test_weakest_block_first_then_its_weakest_neighbours() -> None:
    # Blocks 0 and 3 tie as weakest and no span of 2 covers both: take the one next to the weaker neighbour.
    assert best_start(np.array([1.0, 8.0, 2.0, 1.0]), span_length=2, throughput=1.0) == 2
    # Covering block 0 leaves 1.5 as the new minimum; covering block 3 would leave 1.0.
    assert best_start(np.array([1.0, 8.0, 2.0, 1.5]), span_length=2, throughput=1.0) == 0


def test_choice_is_deterministic() -> None:
    spans = [span(f"p{i}", i % 7, i % 7 + 5, 1.0 + (i % 3)) for i in range(30)]
    choices = {choose_best_span(spans, num_blocks=20, span_length=6, throughput=2.0) for _ in range(5)}
    assert len(choices) == 1


def test_never_moves_when_leaving_uncovers_a_block() -> None:
    # "a" is badly placed (block 0 is strong elsewhere) but it alone holds block 3.
    spans = [span("a", 2, 4, 1.0), span("b", 0, 3, 100.0)]
    assert should_move(spans, num_blocks=4, my_peer_id="a", balance_quality=0.75) is None


def test_shifts_towards_a_gap_keeping_blocks_only_it_holds() -> None:
    # "c" alone holds blocks 7-14; its move to 0:15 keeps them and leaves 15-21, which "b" also holds.
    spans = [span("b", 15, 30), span("c", 7, 22)]
    move = should_move(spans, num_blocks=30, my_peer_id="c", balance_quality=0.75)
    assert move == Move(start=0, reason="bottleneck", old_bottleneck=0.0, new_bottleneck=1.0)


def test_moves_when_the_gain_exceeds_the_threshold() -> None:
    spans = [span("a", 0, 2, 10.0), span("b", 0, 2, 10.0), span("c", 2, 4, 1.0)]
    move = should_move(spans, num_blocks=4, my_peer_id="a", balance_quality=0.75)
    assert move == Move(start=2, reason="bottleneck", old_bottleneck=1.0, new_bottleneck=10.0)


def test_moves_only_past_the_threshold() -> None:
    # Moving "a" raises the bottleneck from 9 to 10 (x1.11): enough at quality 0.95, not at 0.75.
    spans = [span("a", 0, 2, 2.0), span("b", 0, 2, 10.0), span("c", 2, 4, 9.0)]
    assert should_move(spans, num_blocks=4, my_peer_id="a", balance_quality=0.75) is None
    move = should_move(spans, num_blocks=4, my_peer_id="a", balance_quality=0.95)
    assert move is not None and move.start == 2 and move.reason == "bottleneck"


def test_stays_on_its_best_span() -> None:
    spans = [span("a", 0, 2, 1.0), span("b", 2, 4, 1.0), span("c", 0, 4, 1.0)]
    assert should_move(spans, num_blocks=4, my_peer_id="a", balance_quality=1.0) is None


def test_moves_when_the_swarm_is_out_of_balance() -> None:
    # Both edges are starved; no single move lifts the bottleneck, but moving "r" to an edge is a step towards it.
    spans = [span("p", 0, 1, 1.0), span("q", 3, 4, 1.0), span("r", 1, 3, 10.0), span("s", 1, 3, 10.0)]
    move = should_move(spans, num_blocks=4, my_peer_id="r", balance_quality=0.75)
    assert move is not None and move.reason == "imbalance" and move.start in (0, 2)
    assert move.new_bottleneck == move.old_bottleneck == 1.0


def test_balanced_swarm_does_not_move() -> None:
    spans = [span("a", 0, 2, 1.0), span("b", 2, 4, 1.0), span("c", 0, 2, 1.0), span("d", 2, 4, 1.0)]
    for peer in "abcd":
        assert should_move(spans, num_blocks=4, my_peer_id=peer, balance_quality=1.0) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: choose_best_span([], num_blocks=0, span_length=1, throughput=1.0), "num_blocks"),
        (lambda: choose_best_span([], num_blocks=8, span_length=9, throughput=1.0), "span_length"),
        (lambda: choose_best_span([], num_blocks=8, span_length=0, throughput=1.0), "span_length"),
        (lambda: choose_best_span([], num_blocks=8, span_length=2, throughput=float("nan")), "throughput"),
        (lambda: choose_best_span([], num_blocks=8, span_length=2, throughput=-1.0), "throughput"),
        (lambda: choose_best_span([span("a", 4, 9)], num_blocks=8, span_length=2, throughput=1.0), "num_blocks=8"),
        (lambda: span("a", 3, 3), "start < end"),
        (lambda: span("a", 0, 2, float("inf")), "throughput"),
        (lambda: should_move([span("a", 0, 2)], num_blocks=4, my_peer_id="z", balance_quality=0.75), "exactly one"),
        (lambda: should_move([span("a", 0, 2)] * 2, num_blocks=4, my_peer_id="a", balance_quality=0.75), "exactly"),
        (lambda: should_move([span("a", 0, 2)], num_blocks=4, my_peer_id="a", balance_quality=0.0), "balance_quality"),
        (lambda: should_move([span("a", 0, 2)], num_blocks=4, my_peer_id="a", balance_quality=1.5), "balance_quality"),
        (lambda: rebalance(np.ones(4), np.ones(3), 0, 2, 1.0, 0.75), "coverage"),
        (lambda: best_start(np.ones((2, 2)), 1, 1.0), "1-D"),
        (lambda: join_delay(np.random.default_rng(0), -1.0), "max_delay_s"),
    ],
)
def test_rejects_bad_arguments(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_join_delay_is_bounded_and_spread() -> None:
    rng = np.random.default_rng(1)
    delays = [join_delay(rng, 30.0) for _ in range(200)]
    assert all(0.0 <= delay < 30.0 for delay in delays)
    assert np.std(delays) > 5.0
    assert join_delay(rng, 0.0) == 0.0


def test_simulator_balanced_beats_random() -> None:
    config = SwarmConfig(num_servers=200, num_blocks=40, hours=2.0, step_s=60.0, mean_lifetime_h=1.0, seed=3)
    ours, random = simulate(config, "balanced"), simulate(config, "random")
    assert ours.steady_ratio() > 0.7
    assert ours.steady_ratio() > 2 * random.steady_ratio()
    assert ours.uncovered_fraction() == 0.0
    assert (ours.bottleneck <= ours.bound + 1e-9).all()  # the bound is an upper bound at every step


def test_simulator_rebalancing_repairs_an_unbalanced_start() -> None:
    config = SwarmConfig(
        num_servers=200, num_blocks=40, hours=2.0, step_s=60.0, mean_lifetime_h=48.0, unbalanced_start=True, seed=4
    )
    ours, joins_only = simulate(config, "balanced"), simulate(config, "join-only")
    assert ours.moves.sum() > 0 and joins_only.moves.sum() == 0
    assert ours.steady_ratio() > joins_only.steady_ratio() + 0.2


def test_simulator_is_deterministic() -> None:
    config = SwarmConfig(num_servers=100, num_blocks=20, hours=1.0, step_s=120.0, mean_lifetime_h=0.5, seed=5)
    first, second = simulate(config, "balanced"), simulate(config, "balanced")
    np.testing.assert_array_equal(first.bottleneck, second.bottleneck)
    np.testing.assert_array_equal(first.moves, second.moves)
