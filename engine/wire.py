"""The wire format between clients and servers: protocol names, messages, stream framing and limits.

Requests are ``runtime_pb2.ExpertRequest`` and responses ``runtime_pb2.ExpertResponse``: tensors (hivemind's
protobuf ``Tensor``) plus msgpack metadata. A server reports a bad request as a response whose metadata holds
``error`` (one line, shown to the user as is) instead of raising, so its log stays clean and the caller knows the
error is the request's, not the connection's.

Unary RPCs (ping, info, forward, backward) go through hivemind's persistent connection, whose messages the P2P
daemon caps at ``MAX_MESSAGE_BYTES``. The inference stream is framed here, as hivemind frames its streams (a
marker byte, an 8-byte big-endian length, the protobuf), but read with a limit: the length is checked before a
byte of the message is read, so a peer cannot make the other side allocate what it announces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgpack
import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

# Largest message a peer accepts; hivemind's own default (4 MiB) is less than one long sequence of a big model.
MAX_MESSAGE_BYTES = 64 * 2**20

# Protocol names (libp2p protocol ids) of the server's RPCs; the version changes when a message's meaning does.
PING_PROTOCOL = "nectar.block/1/ping"
INFO_PROTOCOL = "nectar.block/1/info"
FORWARD_PROTOCOL = "nectar.block/1/forward"
BACKWARD_PROTOCOL = "nectar.block/1/backward"
INFERENCE_PROTOCOL = "nectar.block/1/inference"  # a stream: a session request, then one message per step
# a server hands a step's output to the next server of the client's chain (the session's push key names it there)
PUSH_PROTOCOL = "nectar.block/1/push"
UNARY_PROTOCOLS = (PING_PROTOCOL, INFO_PROTOCOL, FORWARD_PROTOCOL, BACKWARD_PROTOCOL, PUSH_PROTOCOL)

_MESSAGE, _END = b"\x00", b"\x01"  # hivemind's stream markers: a message, or an error/end of stream
_HEADER_BYTES = 8


class BadRequest(ValueError):
    """The request is malformed or breaks a limit; the server keeps serving everyone else."""


class MessageTooLarge(BadRequest):
    """A stream message announced more bytes than the receiver accepts; the stream cannot go on after it."""


class RemoteError(RuntimeError):
    """A server answered with an error: the message is the server's one-line reason.

    ``unavailable`` means the server cannot take the request now (it is leaving or busy), so another server may;
    ``expired`` that the server closed an inference session its client left idle too long (nobody's fault: the
    client opens it again); otherwise the request itself was refused and retrying it elsewhere would not help.
    """

    def __init__(self, peer: str, message: str, unavailable: bool = False, expired: bool = False):
        super().__init__(f"server {peer[-8:]}: {message}")
        self.peer, self.reason, self.unavailable, self.expired = peer, message, unavailable, expired


# Tensors travel uncompressed, in hivemind's ``Tensor`` message. These dtypes are packed and unpacked here directly
# (the same bytes hivemind's serializer writes, at a fraction of its cost per message: it matters for one token's
# hidden states, packed and unpacked twice per hop of every generation step); others go through hivemind.
_DIRECT_DTYPES = {
    name: getattr(torch, name) for name in ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8")
}


def pack_tensor(tensor: torch.Tensor) -> runtime_pb2.Tensor:
    """A tensor as hivemind's uncompressed ``Tensor`` message."""
    tensor = tensor.detach().cpu()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DIRECT_DTYPES:
        return serialize_torch_tensor(tensor)
    return runtime_pb2.Tensor(
        compression=runtime_pb2.CompressionType.NONE,
        buffer=tensor.contiguous().numpy().tobytes(),
        size=tensor.shape,
        dtype=name,
        requires_grad=False,
    )


def unpack_tensor(message: runtime_pb2.Tensor) -> torch.Tensor:
    """The tensor of a ``Tensor`` message (a malformed one raises; ``unpack`` makes that a ``BadRequest``)."""
    dtype = _DIRECT_DTYPES.get(message.dtype)
    if dtype is None or message.compression != runtime_pb2.CompressionType.NONE or not message.buffer:
        return deserialize_torch_tensor(message)
    return torch.frombuffer(bytearray(message.buffer), dtype=dtype).reshape(tuple(message.size))


def _pack_tensors(tensors: Sequence[torch.Tensor]) -> list[runtime_pb2.Tensor]:
    return [pack_tensor(tensor) for tensor in tensors]


def request(tensors: Sequence[torch.Tensor] = (), **metadata: Any) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(tensors=_pack_tensors(tensors), metadata=msgpack.packb(metadata))


def response(tensors: Sequence[torch.Tensor] = (), **metadata: Any) -> runtime_pb2.ExpertResponse:
    return runtime_pb2.ExpertResponse(tensors=_pack_tensors(tensors), metadata=msgpack.packb(metadata))


def error_response(message: str, unavailable: bool = False, **metadata: Any) -> runtime_pb2.ExpertResponse:
    """A refusal; ``unavailable`` says "not now, ask another server" rather than "this request is wrong"."""
    return response(error=message, **({"unavailable": True} if unavailable else {}), **metadata)


def unpack(message: runtime_pb2.ExpertRequest | runtime_pb2.ExpertResponse) -> tuple[list[torch.Tensor], dict]:
    """Tensors and metadata of a message; malformed metadata is a ``BadRequest``."""
    try:
        metadata = msgpack.unpackb(message.metadata) if message.metadata else {}
        tensors = [unpack_tensor(tensor) for tensor in message.tensors]
    except Exception as error:  # any decoding failure is the sender's fault
        raise BadRequest(f"malformed message: {error}") from None
    if not isinstance(metadata, dict):
        raise BadRequest("malformed message: metadata is not a map")
    return tensors, metadata


def unpack_response(message: runtime_pb2.ExpertResponse, peer: str) -> tuple[list[torch.Tensor], dict]:
    """Like ``unpack``, but a server's error becomes a ``RemoteError``."""
    tensors, metadata = unpack(message)
    if "error" in metadata:
        unavailable, expired = bool(metadata.get("unavailable", False)), bool(metadata.get("expired", False))
        raise RemoteError(peer, str(metadata["error"]), unavailable, expired)
    return tensors, metadata


async def call(
    p2p: P2P, peer_id: str, protocol: str, message: runtime_pb2.ExpertRequest, timeout: float
) -> runtime_pb2.ExpertResponse:
    """One unary RPC to ``peer_id``; the raw response (see ``unpack_response``)."""
    async with asyncio.timeout(timeout):
        return await p2p.call_protobuf_handler(
            PeerID.from_base58(peer_id), protocol, message, runtime_pb2.ExpertResponse
        )


async def send_message(message: runtime_pb2.ExpertRequest | runtime_pb2.ExpertResponse, writer) -> None:
    """One framed message on a stream."""
    await P2P.send_protobuf(message, writer)


async def send_end(writer) -> None:
    """The end-of-stream frame: the peer's next receive returns None."""
    await P2P.send_protobuf(P2P.END_OF_STREAM, writer)


async def receive_message(reader: asyncio.StreamReader, kind: type, max_bytes: int = MAX_MESSAGE_BYTES):
    """The next framed message of type ``kind``, or None at the end of the stream (or an error frame).

    Raises ``MessageTooLarge`` (before reading the message) if it announces more than ``max_bytes``,
    ``BadRequest`` if it does not parse, and ``asyncio.IncompleteReadError`` if the connection closed.
    """
    marker = await reader.readexactly(1)
    if marker not in (_MESSAGE, _END):
        raise BadRequest("malformed stream frame")
    length = int.from_bytes(await reader.readexactly(_HEADER_BYTES), "big")
    if length > max_bytes:
        raise MessageTooLarge(f"message of {length} bytes is larger than the limit of {max_bytes} bytes")
    data = await reader.readexactly(length)
    if marker == _END:
        return None
    message = kind()
    try:
        message.ParseFromString(data)
    except Exception as error:
        raise BadRequest(f"malformed message: {error}") from None
    return message
