"""Idle time on Windows: ``GetLastInputInfo`` (user32) against ``GetTickCount`` (kernel32), through ctypes.

Imports everywhere; opening it off Windows raises ``SourceUnavailable``. Not run on Windows in this project's
tests (no Windows machine here).
"""

from __future__ import annotations

import ctypes
import sys

from agent.activity.base import SourceUnavailable


class _LastInputInfo(ctypes.Structure):
    _fields_ = [("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint)]


class WindowsIdle:
    name = "windows"

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise SourceUnavailable("not Windows")
        self._user32 = ctypes.windll.user32  # type: ignore[attr-defined]
        self._kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]

    def seconds_since_input(self) -> float | None:
        info = _LastInputInfo()
        info.cbSize = ctypes.sizeof(info)
        if not self._user32.GetLastInputInfo(ctypes.byref(info)):
            return None
        ticks = self._kernel32.GetTickCount() & 0xFFFFFFFF
        return ((ticks - info.dwTime) & 0xFFFFFFFF) / 1000.0  # both wrap after 49.7 days

    def close(self) -> None:
        pass
