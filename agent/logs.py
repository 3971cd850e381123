"""Rotating logs in the platform's log directory: ``agent.log`` (this process) and ``server.log`` (its server).

Both live in one directory (``AgentPaths.log_dir``) and the API's ``logs`` endpoint tails either, so
``nectar status`` and the GUI reach them from one place. ``redact`` keeps known secret values out of every line.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Iterable
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TAIL_BLOCK = 64 * 1024


class RedactingFilter(logging.Filter):
    """Replaces secret values with *** in every record that passes through a handler."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def add(self, secret: str | None) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def rotating_handler(path: Path, max_mb: float, keep: int) -> logging.handlers.RotatingFileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=int(max_mb * 1024 * 1024), backupCount=keep, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def setup_agent_logging(path: Path, level: str, max_mb: float, keep: int, to_stderr: bool = True) -> RedactingFilter:
    """Log this process to ``path`` (rotated) and stderr; returns the filter to register secrets with.

    Replaces a plain stderr handler (the CLI's ``basicConfig``) and any earlier agent's handlers; leaves others
    (e.g. a test runner's capture) in place.
    """
    redact = RedactingFilter()
    root = logging.getLogger()
    remove_agent_logging()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [rotating_handler(path, max_mb, keep)]
    if to_stderr:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter(FORMAT))
        handlers.append(stream)
    for handler in handlers:
        handler.addFilter(redact)
        handler._nectar_agent = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "uvicorn.access", "hivemind"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return redact


def remove_agent_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_nectar_agent", False):
            root.removeHandler(handler)
            handler.close()


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (reading only its end); [] when it does not exist yet."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            data = b""
            while size > 0 and data.count(b"\n") <= count:
                step = min(_TAIL_BLOCK, size)
                size -= step
                file.seek(size)
                data = file.read(step) + data
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-count:]
