"""Faults that tests inject into a real server process, so failure handling is tested end to end.

Set ``NECTAR_TEST_FAULT`` in a server's environment; nothing reads it unless a test sets it. Kinds:

- ``step-error``: every compute call (inference step, forward, backward) raises, as a broken dependency or a bad
  GPU would;
- ``answer-nan``: every computed answer is NaN, as a GPU with broken memory or an overflowing float16 would give;
- ``answer-dtype``: every computed answer comes back in float64, as a buggy or modified server might send;
- ``answer-random``: every computed answer is random numbers of the right shape, dtype and scale, as a server that
  saves its compute and makes answers up would send (only a spot-check against another server catches it);
- ``noisy-weights``: the server adds Gaussian noise (``NOISE_SCALE`` of each tensor's spread) to every tensor of the
  first ``NOISY_BLOCKS`` blocks it loads, as a server with altered weights would run (answers look plausible);
- ``slow-compute``: every compute call takes ``SLOW_SECONDS`` longer, as an overloaded server's would (fills queues).
"""

from __future__ import annotations

import os
import time

import torch

FAULT_VARIABLE = "NECTAR_TEST_FAULT"
SLOW_SECONDS = 1.0
NOISY_BLOCKS = 2
NOISE_SCALE = 0.5


class InjectedFault(RuntimeError):
    """Raised where a test asked for a fault."""


def _active() -> str | None:
    return os.environ.get(FAULT_VARIABLE)


def check(point: str) -> None:
    """Raise at ``point`` if a test injected that fault into this process (or stall there, for ``slow-compute``)."""
    kind = _active()
    if kind == point:
        raise InjectedFault(f"fault injected by a test at {point!r}")
    if kind == "slow-compute":
        time.sleep(SLOW_SECONDS)


def corrupt(answer: torch.Tensor) -> torch.Tensor:
    """``answer`` as a faulty server would send it, if a test asked for that; else unchanged."""
    kind = _active()
    if kind == "answer-nan":
        return torch.full_like(answer, float("nan"))
    if kind == "answer-dtype":
        return answer.to(torch.float64)
    if kind == "answer-random":
        return (torch.randn(answer.shape) * answer.float().std()).to(answer.dtype)
    return answer


def tamper(layers: torch.nn.ModuleList) -> None:
    """Alter the weights of a freshly loaded span's first blocks, if a test asked for ``noisy-weights``."""
    if _active() != "noisy-weights":
        return
    with torch.no_grad():
        for layer in list(layers)[:NOISY_BLOCKS]:
            for tensor in layer.parameters():
                if tensor.is_floating_point() and tensor.numel() > 1:
                    tensor.add_(torch.randn_like(tensor) * tensor.float().std().to(tensor.dtype) * NOISE_SCALE)
