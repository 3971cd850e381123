"""``engine.server.precision``: ``--device`` and ``--dtype`` to torch objects (the checkpoint's own dtype for auto)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from engine.server import precision
from engine.server.precision import checkpoint_dtype, resolve_device, resolve_dtype

CPU = torch.device("cpu")


def test_auto_takes_the_checkpoint_dtype() -> None:
    assert resolve_dtype("auto", CPU, LlamaConfig(dtype="bfloat16")) == torch.bfloat16  # Llama 3, Qwen
    assert resolve_dtype("auto", CPU, LlamaConfig(dtype="float16")) == torch.float16
    assert resolve_dtype("auto", CPU, LlamaConfig()) == torch.float32  # the config says nothing
    assert resolve_dtype("auto", CPU, LlamaConfig(dtype="float32")) == torch.float32
    assert checkpoint_dtype(LlamaConfig(dtype="bfloat16")) == torch.bfloat16


def test_auto_falls_back_to_float16_where_bfloat16_is_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU without bfloat16 cannot exist here: the support check is replaced (a pre-Ampere CUDA device)."""
    monkeypatch.setattr(precision, "supports_bfloat16", lambda device: False)
    gpu = torch.device("cuda", 0)
    assert resolve_dtype("auto", gpu, LlamaConfig(dtype="bfloat16")) == torch.float16
    assert resolve_dtype("auto", gpu, LlamaConfig()) == torch.float32
    with pytest.raises(ValueError, match="cuda:0 cannot compute in bfloat16; use --dtype float16 or float32"):
        resolve_dtype("bfloat16", gpu)


def test_explicit_dtypes() -> None:
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16 and resolve_dtype("float16", CPU) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'; choose from auto, float32, bfloat16, float16"):
        resolve_dtype("int8", CPU)


def test_devices() -> None:
    assert resolve_device("cpu") == CPU and resolve_device("cpu:0") == torch.device("cpu", 0)
    with pytest.raises(ValueError, match="is not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1: CUDA is not available on this machine"):
            resolve_device("cuda:1")
