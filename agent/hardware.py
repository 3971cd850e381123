"""What this machine has: accelerators (NVML where it exists, ``torch.cuda`` otherwise) and the CPU and RAM.

Cheap and safe to call from the agent at start: NVML and torch are imported inside the functions, and every
failure means "not found", never an exception.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
from pathlib import Path

import psutil

from agent.api.models import Accelerator, CpuInfo

logger = logging.getLogger(__name__)


def nvml_accelerators() -> list[Accelerator] | None:
    """NVIDIA GPUs from NVML; None when NVML is not available (no pynvml or no driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
            name = _text(pynvml.nvmlDeviceGetName(handle))
            found.append(Accelerator(kind="cuda", name=name, memory_gb=round(memory, 1), driver=driver, source="nvml"))
        return found
    except Exception as error:
        logger.debug("NVML query failed: %s", error)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def torch_accelerators() -> list[Accelerator]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            driver = f"CUDA {torch.version.cuda}" if torch.version.cuda else None
            memory = round(props.total_memory / 2**30, 1)
            found.append(
                Accelerator(kind="cuda", name=props.name, memory_gb=memory, driver=driver, source="torch.cuda")
            )
        return found
    except Exception as error:
        logger.debug("torch.cuda query failed: %s", error)
        return []


def accelerators() -> list[Accelerator]:
    found = nvml_accelerators()
    return found if found is not None else torch_accelerators()


def cpu_info() -> CpuInfo:
    return CpuInfo(
        model=_cpu_model(),
        cores=psutil.cpu_count(logical=False),
        threads=psutil.cpu_count(logical=True),
        ram_gb=round(psutil.virtual_memory().total / 2**30, 1),
    )


def resolve_device(setting: str) -> str:
    """``compute.device``: ``auto`` -> ``cuda:0`` when a GPU exists, else ``cpu``; anything else as given."""
    if setting != "auto":
        return setting
    return "cuda:0" if accelerators() else "cpu"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
