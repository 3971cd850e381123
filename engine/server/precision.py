"""Where a server computes and in which dtype: ``--device`` and ``--dtype`` turned into torch objects, checked.

``--dtype auto`` serves a checkpoint in the dtype it was saved in (``torch_dtype`` / ``dtype`` of its config:
bfloat16 for Llama 3 and Qwen, float32 when the config says nothing). A 16-bit checkpoint whose device cannot
compute in bfloat16 (CUDA before compute capability 8.0) falls back to float16, which has the same size but a
narrower range; a float32 checkpoint stays float32.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cpu:0``, ``cuda``, ``cuda:N`` or ``mps`` as a device that exists here, or a one-line ValueError."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (no GPU or no CUDA build)")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)  # an explicit index: caches and inputs land where the weights are
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda and mps devices are supported")
    return device


def supports_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CPUs do, in torch's own kernels)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "mps":
        try:
            torch.zeros(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
    return True


def checkpoint_dtype(config: PretrainedConfig) -> torch.dtype:
    """The dtype the checkpoint was saved in, per its config; float32 when it says nothing usable."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = DTYPES.get(value.removeprefix("torch."))
    return value if value in DTYPES.values() else torch.float32


def resolve_dtype(name: str, device: torch.device, config: PretrainedConfig | None = None) -> torch.dtype:
    """The dtype to serve in: ``name`` as given, or for ``auto`` the checkpoint's own (see the module docstring)."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
        dtype = DTYPES[name]
        if dtype == torch.bfloat16 and not supports_bfloat16(device):
            raise ValueError(f"{device} cannot compute in bfloat16; use --dtype float16 or float32")
        return dtype
    dtype = checkpoint_dtype(config) if config is not None else torch.float32
    if dtype == torch.bfloat16 and not supports_bfloat16(device):
        return torch.float16
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
