"""The RPC message format: tensors (hivemind's protobuf ``Tensor``) plus msgpack metadata.

Requests are ``runtime_pb2.ExpertRequest`` and responses ``runtime_pb2.ExpertResponse``. A server reports a
bad request as a response whose metadata holds ``error`` (one line, shown to the user as is) instead of
raising, so its log stays clean and the caller knows the error is the request's, not the connection's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

# Largest message a peer accepts; hivemind's own default (4 MiB) is less than one long sequence of a big model.
MAX_MESSAGE_BYTES = 64 * 2**20


class BadRequest(ValueError):
    """The request is malformed or breaks a limit; the server keeps serving everyone else."""


class RemoteError(RuntimeError):
    """A server answered with an error: the message is the server's one-line reason.

    ``unavailable`` means the server cannot take the request now (it is leaving), so another server may; otherwise
    the request itself was refused and retrying it elsewhere would not help.
    """

    def __init__(self, peer: str, message: str, unavailable: bool = False):
        super().__init__(f"server {peer[-8:]}: {message}")
        self.peer, self.reason, self.unavailable = peer, message, unavailable


def _pack_tensors(tensors: Sequence[torch.Tensor]) -> list[runtime_pb2.Tensor]:
    return [serialize_torch_tensor(tensor.detach().cpu()) for tensor in tensors]


def request(tensors: Sequence[torch.Tensor] = (), **metadata: Any) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(tensors=_pack_tensors(tensors), metadata=msgpack.packb(metadata))


def response(tensors: Sequence[torch.Tensor] = (), **metadata: Any) -> runtime_pb2.ExpertResponse:
    return runtime_pb2.ExpertResponse(tensors=_pack_tensors(tensors), metadata=msgpack.packb(metadata))


def error_response(message: str, unavailable: bool = False) -> runtime_pb2.ExpertResponse:
    """A refusal; ``unavailable`` says "not now, ask another server" rather than "this request is wrong"."""
    return response(error=message, unavailable=True) if unavailable else response(error=message)


def unpack(message: runtime_pb2.ExpertRequest | runtime_pb2.ExpertResponse) -> tuple[list[torch.Tensor], dict]:
    """Tensors and metadata of a message; malformed metadata is a ``BadRequest``."""
    try:
        metadata = msgpack.unpackb(message.metadata) if message.metadata else {}
        tensors = [deserialize_torch_tensor(tensor) for tensor in message.tensors]
    except Exception as error:  # any decoding failure is the sender's fault
        raise BadRequest(f"malformed message: {error}") from None
    if not isinstance(metadata, dict):
        raise BadRequest("malformed message: metadata is not a map")
    return tensors, metadata


def unpack_response(message: runtime_pb2.ExpertResponse, peer: str) -> tuple[list[torch.Tensor], dict]:
    """Like ``unpack``, but a server's error becomes a ``RemoteError``."""
    tensors, metadata = unpack(message)
    if "error" in metadata:
        raise RemoteError(peer, str(metadata["error"]), bool(metadata.get("unavailable", False)))
    return tensors, metadata
