"""One compute thread that runs interactive inference first, yet guarantees bulk forward/backward work progress.

Torch releases the GIL while it computes, so the asyncio loop keeps handling the network while a step runs.
A single thread (torch itself uses all cores inside each operation) keeps steps from competing for cores.

Scheduling: an inference step runs before any training job, unless the oldest training job has waited
``training_max_wait`` seconds: then it runs next (aging), so steady chat delays fine-tuning by at most that much
per job instead of starving it. The queue holds at most ``max_queued`` jobs (``submit`` refuses more with
``TooBusy``), and a job that waited ``job_timeout`` seconds is dropped unrun (its client has given up on it).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.server.limits import TooBusy

T = TypeVar("T")

INFERENCE, TRAINING = 0, 1  # job kinds: interactive steps, bulk forward/backward


@dataclass
class _Job:
    kind: int
    fn: Callable[..., Any]
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued_at: float


class PriorityExecutor:
    """Runs callables on one worker thread, inference first with aging for training; returns asyncio futures."""

    def __init__(
        self,
        name: str = "nectar-compute",
        max_queued: int = 64,
        training_max_wait: float = 1.0,
        job_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        after_job: Callable[[tuple, float], None] | None = None,
    ):
        """``after_job(args, seconds)`` runs on the worker thread after each job (a throttle may rest there)."""
        if max_queued < 1 or not training_max_wait >= 0 or not job_timeout > 0:
            raise ValueError("the compute queue needs max_queued >= 1, training_max_wait >= 0 and job_timeout > 0")
        self.max_queued, self.training_max_wait, self.job_timeout = max_queued, training_max_wait, job_timeout
        self.clock = clock
        self._after_job = after_job
        self._queues: dict[int, collections.deque[_Job]] = {
            INFERENCE: collections.deque(),
            TRAINING: collections.deque(),
        }
        self._ready = threading.Condition()
        self._stopped = False
        self.completed = {INFERENCE: 0, TRAINING: 0}  # jobs run, by kind (diagnostics and tests)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return sum(len(jobs) for jobs in self._queues.values())

    def submit(self, kind: int, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; raises ``TooBusy`` at once if ``max_queued`` jobs already wait."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._ready:
            if self.queued >= self.max_queued:
                raise TooBusy(f"server is busy: {self.queued} requests are waiting for its compute; try another server")
            self._queues[kind].append(_Job(kind, fn, args, loop, future, self.clock()))
            self._ready.notify()
        return future

    def shutdown(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join(timeout=10)

    def _next(self) -> _Job | None:
        """The job to run now (see the module docstring); waits for one; None once shut down."""
        with self._ready:
            while not self._stopped and not self.queued:
                self._ready.wait()
            if self._stopped:
                return None
            inference, training = self._queues[INFERENCE], self._queues[TRAINING]
            aged = training and self.clock() - training[0].queued_at >= self.training_max_wait
            return training.popleft() if aged or not inference else inference.popleft()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            if job.future.cancelled():
                continue
            waited = self.clock() - job.queued_at
            if waited > self.job_timeout:
                error = TooBusy(
                    f"server is busy: the request waited {waited:.0f} s for its compute; try another server"
                )
                job.loop.call_soon_threadsafe(_set_exception, job.future, error)
                continue
            started = time.perf_counter()
            try:
                result = job.fn(*job.args)
            except BaseException as error:  # handed to the awaiting coroutine, never lost
                job.loop.call_soon_threadsafe(_set_exception, job.future, error)
            else:
                job.loop.call_soon_threadsafe(_set_result, job.future, result)
            self.completed[job.kind] += 1
            if self._after_job is not None:
                self._after_job(job.args, time.perf_counter() - started)


def _set_result(future: asyncio.Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
