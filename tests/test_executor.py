"""``engine.server.executor``: inference first, training guaranteed progress, a bounded queue and job timeouts."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.server.executor import INFERENCE, TRAINING, PriorityExecutor
from engine.server.limits import TooBusy


def test_training_progresses_while_inference_runs_continuously() -> None:
    """Eight clients keep the inference queue full the whole time; training still gets its jobs done."""
    executor = PriorityExecutor(max_queued=64, training_max_wait=0.05)

    def step() -> None:
        time.sleep(0.002)

    async def scenario() -> tuple[int, int]:
        stop = asyncio.Event()

        async def chat() -> None:
            while not stop.is_set():
                await executor.submit(INFERENCE, step)

        chats = [asyncio.create_task(chat()) for _ in range(8)]
        await asyncio.sleep(0.05)
        assert executor.queued > 0  # inference never lets the queue empty
        trained = 0
        began = time.monotonic()
        while time.monotonic() - began < 1.0:
            await executor.submit(TRAINING, step)
            trained += 1
        stop.set()
        await asyncio.gather(*chats)
        return trained, executor.completed[INFERENCE]

    try:
        trained, inferred = asyncio.run(scenario())
    finally:
        executor.shutdown()
    # aging: a training job waits at most ~training_max_wait behind inference, so about 15 of them run in 1 s
    assert trained >= 5, f"training starved: {trained} jobs in 1 s beside {inferred} inference steps"
    assert inferred > 4 * trained  # and inference still goes first


def test_inference_goes_first_while_training_is_young() -> None:
    executor = PriorityExecutor(training_max_wait=10.0)
    order: list[str] = []
    gate = threading.Event()

    async def scenario() -> None:
        blocker = executor.submit(INFERENCE, gate.wait)  # holds the worker while the others queue up
        jobs = [executor.submit(TRAINING, order.append, "training")]
        jobs += [executor.submit(INFERENCE, order.append, f"step{index}") for index in range(3)]
        gate.set()
        await asyncio.gather(blocker, *jobs)

    try:
        asyncio.run(scenario())
    finally:
        executor.shutdown()
    assert order == ["step0", "step1", "step2", "training"]


def test_a_full_queue_refuses_at_once_and_old_jobs_time_out() -> None:
    now = [0.0]
    executor = PriorityExecutor(max_queued=2, job_timeout=5.0, clock=lambda: now[0])
    gate = threading.Event()

    async def scenario() -> None:
        running = executor.submit(INFERENCE, gate.wait)
        await asyncio.sleep(0.05)  # the worker took it: the queue is empty again
        waiting = [executor.submit(TRAINING, lambda: "done") for _ in range(2)]
        with pytest.raises(TooBusy, match="server is busy: 2 requests are waiting"):
            executor.submit(INFERENCE, lambda: None)
        now[0] = 6.0  # the waiting jobs have waited past their timeout when the worker gets to them
        gate.set()
        await running
        for job in waiting:
            with pytest.raises(TooBusy, match="waited 6 s for its compute"):
                await job
        assert await executor.submit(INFERENCE, lambda: "fresh") == "fresh"  # the queue serves again

    try:
        asyncio.run(scenario())
    finally:
        executor.shutdown()
