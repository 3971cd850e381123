"""Quantized blocks: a block's linear layers replaced, as it loads, by bitsandbytes int8 (LLM.int8) or nf4 layers.

Each layer is quantized right after its float weights are read, and the float weights are dropped at once, so a
server's peak memory is one block in float plus the quantized span, not the float span. Norms, biases, rotary
tables and anything that is not a linear layer (Mixtral's fused experts) stay in the serving dtype. bitsandbytes
0.50 runs both on CPU and CUDA; the quantization happens when the new parameters move to the device.

Precision order for clients that ask for a minimum (``at_least``): nf4 < int8 < none (unquantized).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8", "nf4")
# bits per linear weight, for ordering precisions; an unknown value from a peer ranks below every known one
_BITS = {"nf4": 4, "int8": 8, "none": 16}
INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold: inputs above it go through a float path
NF4_BLOCK = 64  # bitsandbytes' default nf4 block size (one absmax per block)


def check_quantization(name: str, what: str = "--quant") -> str:
    if name not in QUANTIZATIONS:
        raise ValueError(f"{what} must be one of {', '.join(QUANTIZATIONS)}, got {name!r}")
    return name


def at_least(quantization: str, minimum: str) -> bool:
    """Whether weights quantized as ``quantization`` are at least as precise as ``minimum``."""
    return _BITS.get(quantization, 0) >= _BITS[minimum]


def linear_weight_bytes(out_features: int, in_features: int, quantization: str, element_size: int) -> int:
    """Bytes of one linear layer's weight (with its quantization statistics) when quantized so."""
    count = out_features * in_features
    if quantization == "int8":
        return count + 4 * out_features  # int8 weights and one float32 scale per output row
    if quantization == "nf4":
        return count // 2 + 4 * -(-count // NF4_BLOCK)  # two weights a byte and one float32 absmax per block
    return count * element_size


def quantize_linears(
    module: nn.Module, quantization: str, dtype: torch.dtype, device: str, keep: Callable[[str, nn.Module], bool]
) -> nn.Module:
    """Replace every linear layer of ``module`` that ``keep(name, layer)`` allows by its quantized form, in place.

    Weights must already be loaded (on CPU); each float weight is released as soon as its layer is quantized.
    """
    if quantization == "none":
        return module
    _quiet_cast_notice()
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.Linear) and keep(name, child):
            parent_name, _, attribute = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attribute, _quantized(child, quantization, dtype, device))
    _own_copies(module)
    release_freed_memory()
    return module


def _own_copies(module: nn.Module) -> None:
    """Copy the float tensors left (norms, biases) out of the checkpoint's memory map.

    Tensors read with safetensors share its mapping of the file; while any of them lives, every page read during
    quantization (the float weights, now dropped) stays mapped into this process and counts as its memory.
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


def release_freed_memory() -> None:
    """Hand memory freed by the quantization's temporaries back to the OS (glibc keeps it in its heap otherwise).

    Quantizing a block allocates and frees tens of megabytes in pieces glibc keeps for reuse; without a trim the
    process would keep about two float blocks' worth of freed heap per quantized block. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


class _DropCastNotice(logging.Filter):
    """LLM.int8 runs its matmul from float16 inputs, and bitsandbytes logs a warning about the cast on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_cast_notice() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(item, _DropCastNotice) for item in bnb_logger.filters):
        bnb_logger.addFilter(_DropCastNotice())


def _quantized(linear: nn.Linear, quantization: str, dtype: torch.dtype, device: str) -> nn.Module:
    import bitsandbytes as bnb  # heavy: only servers that quantize pay for it

    weight = linear.weight.data.to(dtype)
    bias = None if linear.bias is None else nn.Parameter(linear.bias.data.to(dtype), requires_grad=False)
    has_bias = bias is not None
    if quantization == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=INT8_THRESHOLD,
            device="meta",
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=dtype, quant_type="nf4", device="meta"
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCK)
    if has_bias:
        layer.bias = bias
    linear.weight = None  # the float weight goes now, not when the block is done
    return layer.to(device).requires_grad_(False)
