"""One compute thread that runs interactive inference before bulk forward/backward work.

Torch releases the GIL while it computes, so the asyncio loop keeps handling the network while a step runs.
A single thread (torch itself uses all cores inside each operation) keeps steps from competing for cores.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

INFERENCE, TRAINING = 0, 1  # priorities: lower runs first


class PriorityExecutor:
    """Runs callables on one worker thread in priority order, returning asyncio futures."""

    def __init__(self, name: str = "nectar-compute", after_job: Callable[[tuple, float], None] | None = None):
        """``after_job(args, seconds)`` runs on the worker thread after each job (a throttle may rest there)."""
        self._after_job = after_job
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO among equal priorities
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((priority, next(self._order), fn, args, loop, future))
        return future

    def shutdown(self) -> None:
        self._queue.put((-1, -1, None, (), None, None))
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            _, _, fn, args, loop, future = self._queue.get()
            if fn is None:
                return
            if future.cancelled():
                continue
            started = time.perf_counter()
            try:
                result = fn(*args)
            except BaseException as error:  # handed to the awaiting coroutine, never lost
                loop.call_soon_threadsafe(_set_exception, future, error)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)
            if self._after_job is not None:
                self._after_job(args, time.perf_counter() - started)


def _set_result(future: asyncio.Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
