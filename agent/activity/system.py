"""What other programs do to this machine, and its power: CPU use of other processes, battery, exclusive programs.

All from psutil, which works on Linux, Windows and macOS alike. "Other" means every process outside this agent's
own tree (the agent, its DHT node and its servers), so lending never counts as the owner's load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import PurePath

import psutil


class SystemProbe:
    def __init__(self) -> None:
        self._me = psutil.Process(os.getpid())
        self._tracked: dict[int, psutil.Process] = {}
        self._cores = psutil.cpu_count() or 1
        psutil.cpu_percent(None)  # the first call only starts the measurement

    def other_cpu_percent(self) -> float | None:
        """CPU use of other programs since the last call, as a share of all cores (0-100)."""
        total = psutil.cpu_percent(None)
        ours = 0.0
        try:
            tree = [self._me, *self._me.children(recursive=True)]
        except psutil.Error:
            return None
        alive = {process.pid for process in tree}
        for pid in list(self._tracked):
            if pid not in alive:
                del self._tracked[pid]
        for process in tree:
            tracked = self._tracked.setdefault(process.pid, process)
            try:
                ours += tracked.cpu_percent(None)
            except psutil.Error:
                continue
        return max(0.0, total - ours / self._cores)

    @staticmethod
    def battery() -> tuple[bool | None, float | None]:
        """(on battery, charge percent); (None, None) on a machine without a battery."""
        try:
            state = psutil.sensors_battery()
        except (AttributeError, NotImplementedError, OSError):
            return None, None
        if state is None:
            return None, None
        return (not state.power_plugged if state.power_plugged is not None else None), float(state.percent)

    @staticmethod
    def exclusive_program(names: Iterable[str]) -> str | None:
        """The first running program whose name is in ``names`` (case-insensitive, ``.exe`` optional)."""
        wanted = {_base(name) for name in names if name.strip()}
        if not wanted:
            return None
        for process in psutil.process_iter(["name", "exe"]):
            info = process.info
            for candidate in (info.get("name"), PurePath(info.get("exe") or "").name):
                if candidate and _base(candidate) in wanted:
                    return candidate
        return None


def _base(name: str) -> str:
    name = name.strip().lower()
    return name[:-4] if name.endswith(".exe") else name
