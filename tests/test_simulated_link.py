"""The simulated wide-area link (``engine.server.link``): latency and bandwidth per direction, messages queued on
the wire behind each other (fast, with a fake clock)."""

from __future__ import annotations

import asyncio

import pytest
from hivemind.proto import runtime_pb2

from engine.server.link import LinkDirection, SimulatedLink


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latency_and_bandwidth_add_up_and_messages_queue_on_the_wire() -> None:
    clock = FakeClock()
    direction = LinkDirection(latency=0.05, bytes_per_second=1000.0, clock=clock)
    assert direction.arrival(100) == pytest.approx(100.15)  # 0.1 s on the wire, then 0.05 s of latency
    assert direction.arrival(100) == pytest.approx(100.25)  # sent at once: it waits for the first to leave
    clock.now = 200.0  # an idle wire: no queue
    assert direction.arrival(0) == pytest.approx(200.05)


def test_latency_alone_does_not_queue() -> None:
    direction = LinkDirection(latency=0.2, bytes_per_second=None, clock=FakeClock())
    assert direction.arrival(10**9) == direction.arrival(10**9) == pytest.approx(100.2)


def test_a_link_delays_requests_and_answers_of_a_handler() -> None:
    link = SimulatedLink(latency=0.05)

    async def handler(request, context):
        return runtime_pb2.ExpertResponse()

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await link.wrap(handler)(runtime_pb2.ExpertRequest(), None)
        return loop.time() - began

    assert asyncio.run(timed()) >= 0.1
    assert SimulatedLink().wrap(handler) is handler  # an inactive link costs nothing


def test_bad_link_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="latency >= 0 and bandwidth >= 0, got -1 s, 0 Mbit/s"):
        SimulatedLink(latency=-1)
