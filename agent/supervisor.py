"""One supervisor per child process (the agent's DHT node, its engine server): start, watch, restart, stop.

- The child is ``nectar <args> --ready-json`` (``python -m agent``, or the bundle's own executable: see
  ``agent/executable.py``); its ``READY {json}`` line says it is up, every other line goes to the child's log.
- It dies with the agent (Linux parent-death signal, as in ``local_swarm``).
- A crash (an exit nobody asked for) is restarted after a backoff (1 s, 2 s, 4 s ... up to 60 s); ``crash_limit``
  crashes within ``crash_window`` seconds stop it for good with a reason (``failed``), shown by ``nectar status``.
- ``want_running(False)`` drains: SIGTERM (the server announces that it leaves, finishes the steps in flight and
  exits), then SIGKILL after ``stop_timeout``. ``want_running(True)`` starts it again.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.executable import child_command
from agent.local_swarm import READY_PREFIX, _die_with_parent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildEvent:
    """What a supervisor reports: ``state`` is starting, running, draining, stopped, crashed or failed."""

    state: str
    pid: int | None = None
    ready: dict | None = None
    detail: str = ""
    restarts: int = 0


class Supervisor:
    """Keeps one child running while wanted; reports every change through ``on_event``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: logging.Logger,
        on_event: Callable[[ChildEvent], None] = lambda event: None,
        env: dict[str, str] | None = None,
        crash_limit: int = 3,
        crash_window: float = 600.0,
        stop_timeout: float = 60.0,
        max_backoff: float = 60.0,
    ):
        self.name, self.args, self.log, self.on_event = name, list(args), log, on_event
        self.env = {**os.environ, **(env or {})}
        self.crash_limit, self.crash_window = crash_limit, crash_window
        self.stop_timeout, self.max_backoff = stop_timeout, max_backoff
        self.process: subprocess.Popen | None = None
        self.ready: dict | None = None
        self.restarts = 0
        self.failed: str | None = None
        self.last_crash = ""
        self.output: collections.deque[str] = collections.deque(maxlen=50)
        self._crashes: collections.deque[float] = collections.deque()
        self._wanted = False
        self._restart = False
        self._closed = False
        self._wake = threading.Condition()
        self._ready_event = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"supervise-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def want_running(self, running: bool) -> None:
        with self._wake:
            if running and self.failed is None:
                self._wanted = True
            elif not running:
                self._wanted = False
            self._wake.notify_all()

    def restart(self, args: Sequence[str] | None = None) -> None:
        """Drain the running child and start it again (with new ``args``): e.g. after a setting it reads changed."""
        with self._wake:
            if args is not None:
                self.args = list(args)
            self._restart = True
            self._wake.notify_all()

    def reset(self) -> None:
        """Forget an earlier failure (after the owner changed something) and try again if wanted."""
        with self._wake:
            self.failed, self.restarts = None, 0
            self._crashes.clear()
            self._wake.notify_all()

    def wait_ready(self, timeout: float) -> dict | None:
        self._ready_event.wait(timeout)
        return self.ready

    def stop(self) -> None:
        """Drain and stop the child, and the supervising thread."""
        with self._wake:
            self._wanted, self._closed = False, True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(self.stop_timeout + 10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _loop(self) -> None:
        backoff = 0.0
        while True:
            with self._wake:
                while not self._closed and (not self._wanted or self.failed is not None):
                    self._wake.wait()
                if self._closed:
                    return
            if backoff:
                self._emit("crashed", detail=f"{self.last_crash}; restarting in {backoff:.0f} s")
                with self._wake:
                    self._wake.wait_for(lambda: self._closed or not self._wanted, timeout=backoff)
                    if self._closed or not self._wanted:
                        backoff = 0.0
                        continue
            code, asked = self._run_once()
            if asked:
                backoff = 0.0
                self._emit("stopped", detail=f"exited with code {code}")
                continue
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > self.crash_window:
                self._crashes.popleft()
            reason = self.last_crash = _exit_reason(code, self.output)
            if len(self._crashes) >= self.crash_limit:
                minutes = self.crash_window / 60
                self.failed = f"{self.name} crashed {len(self._crashes)} times in {minutes:.0f} min; last: {reason}"
                logger.error("%s", self.failed)
                self._emit("failed", detail=self.failed)
                continue
            self.restarts += 1
            logger.warning("%s crashed (%s); restart %d", self.name, reason, self.restarts)
            backoff = min(self.max_backoff, 2.0 ** (len(self._crashes) - 1))

    def _run_once(self) -> tuple[int, bool]:
        """Start the child and watch it; returns (exit code, whether the exit was asked for)."""
        self.ready = None
        self._ready_event.clear()
        self._emit("starting")
        self.process = subprocess.Popen(
            [*child_command(), *self.args, "--ready-json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        reader = threading.Thread(target=self._read, args=(self.process,), daemon=True, name=f"read-{self.name}")
        reader.start()
        asked = False
        while self.process.poll() is None:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or not self._wanted or self._restart, timeout=0.5)
                stop = self._closed or not self._wanted or self._restart
                self._restart = False
            if stop and self.process.poll() is None:
                asked = True
                self._drain(self.process)
                break
        code = self.process.wait()
        reader.join(5)
        return code, asked

    def _drain(self, process: subprocess.Popen) -> None:
        self._emit("draining", pid=process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout)
            process.kill()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith(READY_PREFIX) and self.ready is None:
                try:
                    self.ready = json.loads(line[len(READY_PREFIX) :])
                except json.JSONDecodeError:
                    continue
                self._ready_event.set()
                self._emit("running", pid=process.pid, ready=self.ready)
                continue
            self.output.append(line)
            self.log.info("%s", line)

    def _emit(self, state: str, pid: int | None = None, ready: dict | None = None, detail: str = "") -> None:
        pid = pid if pid is not None else (self.process.pid if self.running else None)
        try:
            self.on_event(ChildEvent(state, pid, ready, detail, self.restarts))
        except Exception:  # a broken listener must not stop the supervision
            logger.exception("on_event failed")


def _exit_reason(code: int, output: collections.deque[str]) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    last = next((line for line in reversed(output) if line.strip()), "")
    return f"exit code {code}" + (f": {last[-200:]}" if last else "")
