"""Serve the API with uvicorn on a thread of the agent process, and publish its address in ``api.json``.

The socket is bound here (not by uvicorn) so that port 0 works and a busy port is a one-line error before
anything starts. ``api.json`` tells the CLI and the GUI where the API is and which token file to read.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from agent.paths import write_private

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiAddress:
    """What ``api.json`` holds."""

    url: str
    pid: int
    token_file: str
    started: float

    @classmethod
    def read(cls, path: Path) -> ApiAddress | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(data["url"]), int(data["pid"]), str(data["token_file"]), float(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        write_private(path, json.dumps(self.__dict__, indent=1))


class ApiServer:
    """uvicorn in a daemon thread; ``start`` returns once the socket listens, ``stop`` waits for it to close."""

    def __init__(self, app: FastAPI, host: str, port: int):
        self.app, self.host = app, host
        self.socket = _bind(host, port)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=3)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="nectar-api", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"the API did not start on {self.url}")
        logger.info("API listening on %s", self.url)
        return self

    def publish(self, path: Path, token_file: Path) -> ApiAddress:
        address = ApiAddress(self.url, os.getpid(), str(token_file), time.time())
        address.write(path)
        return address

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.socket.close()

    def _run(self) -> None:
        self._server.run(sockets=[self.socket])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"the API cannot listen on {host}:{port}: {error.strerror} (setting api.port)") from None
    sock.listen(64)
    sock.set_inheritable(False)
    return sock


def unpublish(path: Path) -> None:
    """Remove ``api.json`` if this process wrote it."""
    address = ApiAddress.read(path)
    if address is not None and address.pid == os.getpid():
        path.unlink(missing_ok=True)
