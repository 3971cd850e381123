"""Other programs' GPU use through NVML (pynvml), only where pynvml is installed and an NVIDIA driver answers.

Utilization is per device; the busiest device counts. Where NVML can attribute utilization to processes, this
agent's own processes are left out; where it cannot, a device counts only if none of our processes use it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from agent.activity.base import SourceUnavailable

logger = logging.getLogger(__name__)


class NvmlProbe:
    def __init__(self, own_pids: Callable[[], set[int]]):
        try:
            import pynvml
        except ImportError:
            raise SourceUnavailable("pynvml is not installed") from None
        try:
            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as error:
            raise SourceUnavailable(f"NVML: {error}") from None
        self._nvml, self._own_pids = pynvml, own_pids

    def other_gpu_percent(self) -> float | None:
        nvml, ours = self._nvml, self._own_pids()
        busiest: float | None = None
        for handle in self._handles:
            try:
                samples = nvml.nvmlDeviceGetProcessUtilization(handle, 0)
                value = float(sum(sample.smUtil for sample in samples if sample.pid not in ours))
            except nvml.NVMLError:
                try:
                    users = {process.pid for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle)}
                    if users & ours:
                        continue  # busy with our own work, and NVML cannot split it
                    value = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nvml.NVMLError as error:
                    logger.debug("NVML query failed: %s", error)
                    continue
            busiest = value if busiest is None else max(busiest, value)
        return None if busiest is None else min(100.0, busiest)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()
