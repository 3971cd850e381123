"""Continuous batching of inference steps: one-token steps of different sessions that wait at the same time run as
one forward, so a server's sessions share its compute instead of taking turns.

Every step is still its own job on the compute queue (``PriorityExecutor``): fairness, queue limits, job timeouts
and the throttle's accounting see each step as before. When the compute thread reaches a step's job, it takes that
step together with every waiting step it can join (``batchable``) and computes them in one batched forward
(``SpanBackend.inference_steps``); the jobs of the steps it took find their results ready when their turn comes.
A session that opens while others generate joins the next batch; nobody waits for a batch to drain. Steps that
cannot join (several tokens, deep prompts, a family without batched steps) run alone, as they always did.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.server.backend import Session, SpanBackend

MAX_BATCH_ROWS = 64  # rows of one batched forward; more waiting steps go to the next batch
# Rows x keys of the padded attention cache a batched forward gathers per layer (a temporary copy of the sessions'
# caches): bounds that memory when long sessions batch together.
MAX_BATCH_KEYS = 2**16


@dataclass(eq=False)
class WaitingStep:
    """A checked step waiting for the compute thread, and its result once a batch (or it alone) ran it."""

    backend: SpanBackend
    session: Session
    hidden: torch.Tensor
    position: int
    done: bool = False
    output: torch.Tensor | None = None
    error: BaseException | None = None
    _group: tuple = field(default=(), repr=False)

    @property
    def batchable(self) -> bool:
        return self.hidden.shape[1] == 1 and self.session.prompts is None and self.backend.span.family.batches_steps()

    @property
    def group(self) -> tuple:
        """Steps run together only on the same span object, blocks and adapter."""
        if not self._group:
            self._group = (id(self.backend), self.session.start, self.session.end, self.session.adapter)
        return self._group


class StepBatcher:
    """Waiting inference steps; ``run(step)`` (on the compute thread) computes ``step`` and those it can join."""

    def __init__(self, max_rows: int = MAX_BATCH_ROWS, enabled: bool = True, max_keys: int = MAX_BATCH_KEYS):
        self.max_rows, self.enabled, self.max_keys = max_rows, enabled, max_keys
        self._waiting: list[WaitingStep] = []
        self._lock = threading.Lock()
        self.batches = 0  # batched forwards of two or more sessions (diagnostics and tests)
        self.largest = 0  # most sessions in one batched forward

    def add(self, step: WaitingStep) -> None:
        with self._lock:
            self._waiting.append(step)

    def forget(self, step: WaitingStep) -> None:
        """Drop a step that will not run (its job was refused, dropped or cancelled)."""
        with self._lock:
            if step in self._waiting:
                self._waiting.remove(step)

    def run(self, step: WaitingStep) -> torch.Tensor:
        """The compute job of ``step``: its output, computed now (with others) or earlier by another step's batch."""
        with self._lock:
            if not step.done:
                batch = self._take(step)
        if not step.done:
            self._compute(batch)
        if step.error is not None:
            raise step.error
        return step.output

    def _take(self, step: WaitingStep) -> list[WaitingStep]:
        if step in self._waiting:
            self._waiting.remove(step)
        batch, rows, keys = [step], step.hidden.shape[0], step.position + 1
        if not (self.enabled and step.batchable):
            return batch
        for other in list(self._waiting):
            if rows >= self.max_rows:
                break
            more_rows, more_keys = rows + other.hidden.shape[0], max(keys, other.position + 1)
            if (
                other.group == step.group
                and other.batchable
                and other.session.cache is not None  # closed while it waited
                and all(other.session is not taken.session for taken in batch)
                and more_rows <= self.max_rows
                and more_rows * more_keys <= self.max_keys
            ):
                self._waiting.remove(other)
                batch.append(other)
                rows, keys = more_rows, more_keys
        return batch

    def _compute(self, batch: list[WaitingStep]) -> None:
        try:
            if len(batch) == 1:
                only = batch[0]
                outputs = [only.backend.inference_step(only.session, only.hidden, only.position)]
            else:
                outputs = batch[0].backend.inference_steps(
                    [step.session for step in batch], [step.hidden for step in batch], [step.position for step in batch]
                )
                self.batches += 1
                self.largest = max(self.largest, len(batch))
        except BaseException as error:  # every step of the batch fails with it; each session ends
            for step in batch:
                step.error, step.done = error, True
            return
        for step, output in zip(batch, outputs, strict=True):
            step.output, step.done = output, True


def step_job(batcher: StepBatcher, step: WaitingStep) -> Callable[..., torch.Tensor]:
    """The compute-queue job of ``step``, submitted with (session, hidden, position) as its arguments so that the
    queue's accounting (tokens, sessions, bytes) sees the step; its ``__name__`` names it in logs."""

    def inference_step(*accounting: object) -> torch.Tensor:
        return batcher.run(step)

    return inference_step
