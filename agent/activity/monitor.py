"""``ActivityMonitor``: every ``activity.poll_seconds``, gather ``Observations`` and let the policy decide.

Runs on its own thread; a source that fails gives "unknown" for that poll, never an exception out of the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.activity.base import IdleSource, SourceUnavailable
from agent.activity.choose import choose_idle_source
from agent.activity.system import SystemProbe
from agent.state import AgentState
from agent.throttle import Observations

logger = logging.getLogger(__name__)


class ActivityMonitor:
    def __init__(
        self,
        state: AgentState,
        own_pids: Callable[[], set[int]] = set,
        server_memory_gb: Callable[[], float | None] = lambda: None,
        idle_source_factory: Callable[[str], IdleSource] = choose_idle_source,
    ):
        self.state, self.own_pids, self.server_memory_gb = state, own_pids, server_memory_gb
        self.idle_source_factory = idle_source_factory
        self.idle_source: IdleSource | None = None
        self._idle_setting: str | None = None
        self._system = SystemProbe()
        self._gpu = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nectar-activity", daemon=True)

    def start(self) -> None:
        try:
            from agent.activity.gpu import NvmlProbe

            self._gpu = NvmlProbe(self.own_pids)
        except SourceUnavailable as error:
            logger.info("no GPU activity source: %s", error)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for source in (self.idle_source, self._gpu):
            if source is not None:
                source.close()

    def observe(self) -> Observations:
        settings = self.state.settings
        if settings.activity.idle_source != self._idle_setting:
            if self.idle_source is not None:
                self.idle_source.close()
            self._idle_setting = settings.activity.idle_source
            self.idle_source = self.idle_source_factory(self._idle_setting)
        on_battery, percent = self._system.battery()
        return Observations.at(
            idle_seconds=self.idle_source.seconds_since_input(),
            on_battery=on_battery,
            battery_percent=percent,
            other_cpu_percent=self._system.other_cpu_percent(),
            other_gpu_percent=self._gpu.other_gpu_percent() if self._gpu is not None else None,
            exclusive_program=self._system.exclusive_program(settings.activity.exclusive_programs),
            server_memory_gb=self.server_memory_gb(),
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.state.evaluate(self.observe())
            except Exception:  # the policy loop must outlive any one bad poll
                logger.exception("activity poll failed")
            self._stop.wait(self.state.settings.activity.poll_seconds)
