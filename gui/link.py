"""``AgentLink``: the GUI's one connection to the agent, and the boundary between the Qt thread and the network.

Every call to the agent runs on a ``QThreadPool`` worker with its own ``ChatClient`` (one per worker thread);
results come back to the Qt thread through a queued signal of this object, so callbacks may touch widgets. The
Qt thread never waits on the network: a slow or dead agent shows as a state (``unreachable``), never a frozen
window. ``AgentLink`` polls the status every few seconds and says when it changes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from agent.api.models import Status
from agent.chat_client import ChatClient
from agent.client import AgentClientError
from agent.paths import AgentPaths

logger = logging.getLogger(__name__)

POLL_MS = 2000
STATUS_TIMEOUT = 4.0  # the status answers at once; longer means the agent is stuck, which the tray says

Callback = Callable[[Any], None]


def _one_line(error: Exception) -> str:
    if isinstance(error, AgentClientError):
        return str(error)
    if isinstance(error, httpx.HTTPError):  # the connection broke mid-answer: the agent stopped or restarted
        return f"the agent's API stopped answering ({type(error).__name__})"
    logger.error("agent call failed", exc_info=error)  # a bug: in the log, and to the user as one line
    return f"{type(error).__name__}: {error}"


def _emit(link: AgentLink, callback: Callback, value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the GUI closed while this call was in flight: nobody is left to tell
        link.deliver.emit(callback, value)


class _Call(QRunnable):
    """Runs ``work(client)`` on a pool thread and hands its result (or one-line error) to the link."""

    def __init__(self, link: AgentLink, work: Callable[[ChatClient], Any], done: Callback | None, failed: Callback):
        super().__init__()
        self.link, self.work, self.done, self.failed = link, work, done, failed

    def run(self) -> None:
        try:
            result = self.work(self.link.client())
        except Exception as error:  # every failure reaches the user as one line, never kills a pool thread
            _emit(self.link, self.failed, _one_line(error))
        else:
            if self.done is not None:
                _emit(self.link, self.done, result)


class StreamHandle:
    """A running stream: ``stop()`` ends it at the next item, or closes its connection if none comes soon."""

    ABORT_AFTER_S = 1.0  # an answer waiting for its first token gets no next item to stop at

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.client: ChatClient | None = None
        self.finished = False

    def stop(self) -> None:
        self.cancel.set()
        threading.Timer(self.ABORT_AFTER_S, self._abort).start()

    def _abort(self) -> None:
        client = self.client
        if client is not None and not self.finished:
            client.close()  # the agent sees the connection close and ends the swarm session


class _Stream(QRunnable):
    """Iterates ``work(client, cancel)`` on a pool thread, handing each item to ``on_item`` on the Qt thread."""

    def __init__(
        self,
        link: AgentLink,
        work: Callable[[ChatClient, threading.Event], Iterator[Any]],
        on_item: Callback,
        done: Callback,
        failed: Callback,
        handle: StreamHandle,
    ):
        super().__init__()
        self.link, self.work, self.on_item, self.done, self.failed = link, work, on_item, done, failed
        self.handle = handle

    def run(self) -> None:
        cancel = self.handle.cancel
        items = None
        try:
            self.handle.client = self.link.client()
            items = self.work(self.handle.client, cancel)
            for item in items:
                _emit(self.link, self.on_item, item)
                if cancel.is_set():
                    break
        except Exception as error:
            if cancel.is_set():  # the connection was closed to stop it: a stop, not a failure
                _emit(self.link, self.done, True)
            else:
                _emit(self.link, self.failed, _one_line(error))
        else:
            _emit(self.link, self.done, cancel.is_set())
        finally:
            self.handle.finished = True
            close = getattr(items, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()  # closing a chat stream closes its connection: the agent ends the answer at once


class AgentLink(QObject):
    """Calls the agent off the Qt thread; ``status_changed`` and ``unreachable`` keep every window current."""

    status_changed = Signal(object)  # Status
    unreachable = Signal(str)  # why the agent does not answer
    deliver = Signal(object, object)  # (callback, value), emitted by workers, run here on the Qt thread

    def __init__(self, paths: AgentPaths, poll_ms: int = POLL_MS, parent: QObject | None = None):
        super().__init__(parent)
        self.paths = paths
        self.status: Status | None = None
        self.error: str | None = None  # the last reason the agent did not answer
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(6)  # a stream, a benchmark and a few short calls at once
        self._local = threading.local()
        self._clients: list[ChatClient] = []
        self._clients_lock = threading.Lock()
        self._polling = False
        self.deliver.connect(self._deliver)
        self.timer = QTimer(self)
        self.timer.setInterval(poll_ms)
        self.timer.timeout.connect(self.refresh)

    def start(self) -> None:
        self.refresh()
        self.timer.start()

    def client(self) -> ChatClient:
        """This worker thread's client (connects again when the agent was restarted: a new address or token)."""
        client: ChatClient | None = getattr(self._local, "client", None)
        started = getattr(self._local, "started", None)
        current = _api_started(self.paths)
        if client is None or started != current or client.closed:
            client = ChatClient.connect(self.paths)
            self._local.client, self._local.started = client, current
            with self._clients_lock:
                self._clients.append(client)
        return client

    def call(self, work: Callable[[ChatClient], Any], done: Callback | None = None, failed: Callback | None = None):
        """Run ``work(client)`` off the Qt thread; ``done(result)`` or ``failed(message)`` run on the Qt thread."""
        self.pool.start(_Call(self, work, done, failed or self._report))

    def stream(
        self,
        work: Callable[[ChatClient, threading.Event], Iterator[Any]],
        on_item: Callback,
        done: Callback,
        failed: Callback,
    ) -> StreamHandle:
        """Iterate ``work`` off the Qt thread; ``handle.stop()`` stops it; ``done(stopped)`` or ``failed`` ends it."""
        handle = StreamHandle()
        self.pool.start(_Stream(self, work, on_item, done, failed, handle))
        return handle

    @Slot()
    def refresh(self) -> None:
        """Ask for the status now (at most one request in flight, so a stuck agent does not pile them up)."""
        if self._polling:
            return
        self._polling = True
        self.call(_status, self._got_status, self._no_status)

    def apply_status(self, status: Status) -> None:
        """An answer that carries the new status (pause, resume, snooze): show it without waiting for a poll."""
        self.error = None
        self.status = status
        self.status_changed.emit(status)

    def close(self) -> None:
        self.timer.stop()
        self.pool.waitForDone(5000)
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def _got_status(self, status: Status) -> None:
        self._polling = False
        self.apply_status(status)

    def _no_status(self, message: str) -> None:
        self._polling = False
        self.error = message
        self.unreachable.emit(message)

    def _report(self, message: str) -> None:
        logger.warning("%s", message)

    @Slot(object, object)
    def _deliver(self, callback: Callback, value: Any) -> None:
        callback(value)


def _status(client: ChatClient) -> Status:
    return client.status(timeout=STATUS_TIMEOUT)


def _api_started(paths: AgentPaths) -> float | None:
    from agent.api.server import ApiAddress

    address = ApiAddress.read(paths.api_file)
    return address.started if address else None


def elapsed(since: float) -> str:
    """'12 s', '4 min', '2 h 5 min': how long ago ``since`` (unix time) was."""
    seconds = max(0, int(time.time() - since))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
