"""What a client accepts from a server: the dtype it sends in, and answers checked before anything uses them.

A server's answer is checked for its shape, its dtype and finite values before it reaches the next server, the
sampler or autograd. A wrong answer is the sending server's fault (``BadAnswer``): the client bans that server and
recomputes the blocks elsewhere, instead of crashing later or blaming the next server for NaNs it was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.records import ServerRecord

_SIXTEEN_BIT = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class BadAnswer(RuntimeError):
    """A server's answer has the wrong shape or dtype, or values that are not finite; the message names the server."""


def wire_dtype(record: ServerRecord) -> torch.dtype:
    """The dtype to send hidden states to this server in: its own when 16-bit (it would round them to it anyway,
    so the result is the same and the message half as large), else float32."""
    return _SIXTEEN_BIT.get(record.dtype, torch.float32)


def check_answer(tensor: torch.Tensor, shape: Sequence[int], record: ServerRecord, what: str) -> torch.Tensor:
    """``tensor`` if it is a finite float32 or server-dtype tensor of ``shape``; else a ``BadAnswer``."""
    name = f"server {record.peer_id[-8:]}"
    allowed = {torch.float32, wire_dtype(record)}
    if tensor.dtype not in allowed:
        expected = " or ".join(sorted(str(dtype).removeprefix("torch.") for dtype in allowed))
        raise BadAnswer(f"{name} answered {what} in {str(tensor.dtype).removeprefix('torch.')}, expected {expected}")
    if tuple(tensor.shape) != tuple(shape):
        raise BadAnswer(f"{name} answered {what} of shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise BadAnswer(f"{name} answered {what} with values that are not finite (NaN or infinity)")
    return tensor
