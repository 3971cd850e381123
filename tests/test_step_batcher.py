"""``StepBatcher``: which waiting steps join a batch, and every step of a batch gets its own result or the batch's
error (fast: the backend is a stand-in that records its calls)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.server.batching import StepBatcher, WaitingStep


class RecordingBackend:
    """Stands in for ``SpanBackend``: outputs are the inputs plus 1; records which sessions ran together."""

    def __init__(self, batches: bool = True, fail: bool = False):
        self.span = SimpleNamespace(family=SimpleNamespace(batches_steps=lambda: batches))
        self.calls: list[list[int]] = []
        self.fail = fail

    def inference_step(self, session, hidden, position):
        self.calls.append([session.session_id])
        return hidden + 1

    def inference_steps(self, sessions, hiddens, positions):
        self.calls.append([session.session_id for session in sessions])
        if self.fail:
            raise RuntimeError("out of memory")
        return [hidden + 1 for hidden in hiddens]


def session(number: int, start: int = 0, adapter: str | None = None, prompts=None):
    return SimpleNamespace(session_id=number, start=start, end=4, adapter=adapter, prompts=prompts, cache=object())


def waiting(batcher: StepBatcher, backend, item, tokens: int = 1, position: int = 3) -> WaitingStep:
    step = WaitingStep(backend, item, torch.full((1, tokens, 2), float(item.session_id)), position)
    batcher.add(step)
    return step


def test_waiting_steps_of_the_same_blocks_and_adapter_run_together() -> None:
    batcher, backend = StepBatcher(), RecordingBackend()
    steps = [waiting(batcher, backend, session(number)) for number in range(3)]
    other_blocks = waiting(batcher, backend, session(3, start=1))
    other_adapter = waiting(batcher, backend, session(4, adapter="lora"))
    prefill = waiting(batcher, backend, session(5), tokens=4)
    prompted = waiting(batcher, backend, session(6, prompts=torch.zeros(1)))
    for step in [*steps, other_blocks, other_adapter, prefill, prompted]:
        assert torch.equal(batcher.run(step), step.hidden + 1)
    assert backend.calls == [[0, 1, 2], [3], [4], [5], [6]]
    assert batcher.batches == 1 and batcher.largest == 3


def test_families_without_batched_steps_and_a_disabled_batcher_run_steps_alone() -> None:
    for batcher, backend in ((StepBatcher(), RecordingBackend(batches=False)), (StepBatcher(enabled=False), None)):
        backend = backend or RecordingBackend()
        steps = [waiting(batcher, backend, session(number)) for number in range(2)]
        for step in steps:
            batcher.run(step)
        assert backend.calls == [[0], [1]]


def test_a_batch_is_capped_at_max_rows_and_forgotten_steps_do_not_run() -> None:
    batcher, backend = StepBatcher(max_rows=2), RecordingBackend()
    steps = [waiting(batcher, backend, session(number)) for number in range(4)]
    batcher.forget(steps[1])
    for step in (steps[0], steps[2], steps[3]):
        batcher.run(step)
    assert backend.calls == [[0, 2], [3]]


def test_a_batch_is_capped_in_padded_keys() -> None:
    batcher, backend = StepBatcher(max_keys=25), RecordingBackend()
    steps = [waiting(batcher, backend, session(number), position=position) for number, position in enumerate([4, 9, 5])]
    for step in steps:
        batcher.run(step)
    assert backend.calls == [[0, 1], [2]]  # 2 rows padded to 10 keys fit in 25; a third row would make 30


def test_a_failed_batch_fails_each_of_its_steps() -> None:
    batcher, backend = StepBatcher(), RecordingBackend(fail=True)
    steps = [waiting(batcher, backend, session(number)) for number in range(2)]
    for step in steps:
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.run(step)
    assert backend.calls == [[0, 1]]
