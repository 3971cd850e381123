"""What the tray shows for a status: one of six states, a one-line title and the reason, in the CLI's words.

Pure functions of the agent's ``Status`` (or of the reason it does not answer), so the tray, the dashboard and
the tests agree, and a test can check each state without a display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from agent.api.models import Status

TrayState = Literal["starting", "lending", "reduced", "paused", "snoozed", "error"]
TRAY_STATES: tuple[TrayState, ...] = ("starting", "lending", "reduced", "paused", "snoozed", "error")

TITLES: dict[TrayState, str] = {
    "starting": "Starting",
    "lending": "Lending",
    "reduced": "Lending less",
    "paused": "Paused",
    "snoozed": "Snoozed",
    "error": "Needs attention",
}


@dataclass(frozen=True)
class View:
    state: TrayState
    title: str  # "Lending", "Paused", ...
    reason: str  # why, in the agent's words

    @property
    def tooltip(self) -> str:
        return f"Nectar: {self.title}\n{self.reason}"


def view_of(status: Status | None, error: str | None = None, starting: bool = False) -> View:
    """The tray's view of the newest status; ``error`` is why the agent did not answer the last poll."""
    if status is None or error is not None:
        if starting or (status is None and error is None):
            return View("starting", TITLES["starting"], "starting the agent...")
        return View("error", TITLES["error"], error or "the agent does not answer")
    server = status.server
    if status.stop_reason or server.state == "failed":
        return View("error", TITLES["error"], status.stop_reason or server.detail or "the server failed")
    if status.snoozed_until is not None and status.snoozed_until > time.time() and status.mode == "paused":
        until = time.strftime("%H:%M", time.localtime(status.snoozed_until))
        return View("snoozed", TITLES["snoozed"], f"snoozed until {until}")
    if status.mode == "paused":
        return View("paused", TITLES["paused"], status.reason)
    if server.state in ("stopped", "starting") or server.state == "crashed":
        detail = "the server is restarting after a crash" if server.state == "crashed" else "the server is starting"
        return View("starting", TITLES["starting"], f"{status.reason}; {detail}")
    if status.mode == "reduced":
        return View("reduced", TITLES["reduced"], status.reason)
    return View("lending", TITLES["lending"], status.reason)


def span_text(status: Status) -> str:
    """'blocks 0-29 of smollm2-135m, 12 tokens/s' or why there is no span."""
    server = status.server
    if server.blocks is None:
        return f"no blocks served now ({server.state})"
    start, end = server.blocks
    speed = f", {server.throughput:.0f} tokens/s announced" if server.throughput else ""
    return f"blocks {start}-{end - 1} of {status.swarm.model}{speed}"
