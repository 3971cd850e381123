"""Faults that tests inject into a real server process, so failure handling is tested end to end.

Set ``NECTAR_TEST_FAULT`` in a server's environment; nothing reads it unless a test sets it. Kinds:
``step-error`` makes every compute call (inference step, forward, backward) raise, as a broken dependency or a
bad GPU would.
"""

from __future__ import annotations

import os

FAULT_VARIABLE = "NECTAR_TEST_FAULT"


class InjectedFault(RuntimeError):
    """Raised where a test asked for a fault."""


def check(point: str) -> None:
    """Raise at ``point`` if a test injected that fault into this process."""
    if os.environ.get(FAULT_VARIABLE) == point:
        raise InjectedFault(f"fault injected by a test at {point!r}")
