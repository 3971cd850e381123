"""Idle time on macOS: IOKit's ``HIDIdleTime`` (nanoseconds) of the ``IOHIDSystem`` service, read with ``ioreg``.

``ioreg`` ships with every macOS and avoids binding CoreFoundation through ctypes. Imports everywhere; opening it
off macOS raises ``SourceUnavailable``. Not run on macOS in this project's tests (no Mac here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from agent.activity.base import SourceUnavailable

_IDLE = re.compile(rb'"HIDIdleTime" = (\d+)')


class MacIdle:
    name = "macos"

    def __init__(self) -> None:
        if sys.platform != "darwin" or shutil.which("ioreg") is None:
            raise SourceUnavailable("not macOS")

    def seconds_since_input(self) -> float | None:
        try:
            output = subprocess.run(
                ["ioreg", "-c", "IOHIDSystem", "-d", "4"], capture_output=True, timeout=2, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        match = _IDLE.search(output)
        return int(match.group(1)) / 1e9 if match else None

    def close(self) -> None:
        pass
