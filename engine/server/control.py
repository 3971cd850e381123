"""A server's control channel: a throttle it reads from a file and a status it writes to another.

Whoever runs the server (a volunteer agent, a script) changes how much it computes without a restart by
writing ``throttle.json`` in the server's ``--control-dir``:

    {"threads": 2, "duty_cycle": 0.5, "throughput_scale": 0.5}

- ``threads``: torch compute threads (0: as started);
- ``duty_cycle``: the share of wall time the compute thread may work, in (0, 1]: after a step of t seconds it
  rests t * (1 - d) / d seconds;
- ``throughput_scale``: the announced throughput and inference steps/s are multiplied by it (re-announced at
  once), so clients route new sessions and training to other servers.

The server writes ``status.json`` there every second (state, span, open sessions, tokens and sessions computed),
so its runner can show and count its work. Files, not signals or RPCs: they work the same on every OS, need no
port, and keep the engine free of any knowledge of who controls it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

THROTTLE_FILE = "throttle.json"
STATUS_FILE = "status.json"
POLL_SECONDS = 0.1
STATUS_SECONDS = 1.0
MAX_REST_SECONDS = 5.0  # one rest never exceeds this, so a slow step cannot stall the thread for long


@dataclass(frozen=True)
class Throttle:
    threads: int = 0
    duty_cycle: float = 1.0
    throughput_scale: float = 1.0

    @classmethod
    def parse(cls, data: object) -> Throttle:
        if not isinstance(data, dict):
            raise ValueError("the throttle must be a JSON object")
        threads = int(data.get("threads", 0))
        duty = float(data.get("duty_cycle", 1.0))
        scale = float(data.get("throughput_scale", 1.0))
        if threads < 0 or not 0 < duty <= 1 or not 0 <= scale <= 1:
            raise ValueError(f"threads >= 0, duty_cycle in (0, 1], throughput_scale in [0, 1]; got {data}")
        return cls(threads, duty, scale)


class ServerControl:
    """Applies the throttle file to the compute thread and writes the status file."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.throttle = Throttle()
        self.tokens_computed = 0
        self._sessions_seen: set[int] = set()
        self._threads_applied = 0
        self._initial_threads = torch.get_num_threads()
        self._mtime: float | None = None
        self._lock = threading.Lock()

    @property
    def sessions_computed(self) -> int:
        return len(self._sessions_seen)

    def after_job(self, args: tuple, elapsed: float) -> None:
        """Runs on the compute thread after each job: count the work, apply threads, rest for the duty cycle."""
        with self._lock:
            self.tokens_computed += _tokens(args)
            session = getattr(args[0], "session_id", None) if args else None
            if session is not None:
                self._sessions_seen.add(hash(session))
            throttle = self.throttle
        wanted = throttle.threads or self._initial_threads
        if wanted != self._threads_applied:
            torch.set_num_threads(wanted)  # per-thread in OpenMP builds: it must run on the compute thread
            self._threads_applied = wanted
        if throttle.duty_cycle < 1:
            time.sleep(min(MAX_REST_SECONDS, elapsed * (1 - throttle.duty_cycle) / throttle.duty_cycle))

    def read(self) -> bool:
        """Re-read the throttle file if it changed; True when the throttle changed."""
        path = self.directory / THROTTLE_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            new = Throttle.parse(json.loads(path.read_text())) if mtime is not None else Throttle()
        except (OSError, ValueError) as error:
            logger.warning("ignoring %s: %s", path, error)
            return False
        if new == self.throttle:
            return False
        logger.info("throttle: %s", new)
        self.throttle = new
        return True

    def write_status(self, status: dict) -> None:
        payload = {
            **status,
            "pid": os.getpid(),
            "time": time.time(),
            "tokens_computed": self.tokens_computed,
            "sessions_computed": self.sessions_computed,
            "throttle": asdict(self.throttle),
        }
        temporary = self.directory / (STATUS_FILE + ".tmp")
        temporary.write_text(json.dumps(payload))
        temporary.replace(self.directory / STATUS_FILE)

    async def run(self, status: Callable[[], dict], on_change: Callable[[], Awaitable[None]]) -> None:
        """Poll the throttle (re-announcing on a change) and write the status, until cancelled."""
        last_status = 0.0
        while True:
            if self.read():
                try:
                    await on_change()
                except Exception as error:  # a failed announcement is retried by the periodic one
                    logger.warning("could not announce the new throughput: %s", error)
            if time.monotonic() - last_status >= STATUS_SECONDS:
                try:
                    self.write_status(status())
                except OSError as error:
                    logger.warning("could not write the status file: %s", error)
                last_status = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)


def _tokens(args: tuple) -> int:
    """Tokens in a job: of its first hidden-states tensor, [batch, length, hidden] or [tokens, hidden]."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() >= 2:
            return int(arg.shape[0] * arg.shape[1]) if arg.dim() >= 3 else int(arg.shape[0])
    return 0
