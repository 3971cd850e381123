"""Private swarms: a secret key that a swarm's owner hands out, without which no peer can use the swarm.

libp2p's own private networks (a pre-shared key that encrypts every connection) would be the natural tool, but the
P2P daemon hivemind ships has no option for it. So the key guards Nectar's protocols one level up: every peer of a
private swarm runs ``GuardedP2P``, which serves a protocol (DHT, server RPC, inference stream) only to peers that
proved they hold the key, and talks only to peers that proved it back.

The proof is a mutual handshake on first contact: the caller sends the current time and an HMAC, under the key, of
both peer ids and that time; the callee checks it and answers with its own HMAC. libp2p authenticates peer ids on
every connection, so a proof made for one pair of peers is worth nothing to anyone else, and an outsider can neither
read nor write the DHT, nor call a server, nor pose as a server to members. Proofs are remembered for a while (the
caller's for less time than the callee's, so it proves itself again before the callee forgets it).

Key files look like libp2p's ``swarm.key``: ``/key/swarm/psk/1.0.0/``, ``/base16/``, 64 hex digits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import struct
import time
from pathlib import Path

import msgpack
from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.p2p.p2p_daemon_bindings.utils import P2PHandlerError
from hivemind.proto import runtime_pb2
from hivemind.proto.p2pd_pb2 import RPCError
from hivemind.utils import get_dht_time

logger = logging.getLogger(__name__)

KEY_HEADER = "/key/swarm/psk/1.0.0/\n/base16/\n"
HELLO_PROTOCOL = "nectar.swarm/1/hello"
REFUSED = "this swarm is private: prove you hold its swarm key first"
MAX_CLOCK_SKEW = 300.0  # seconds between two peers' clocks that a proof survives
PROVEN_TTL = 60.0  # how long a caller trusts that a callee knows it
MEMBER_TTL = 600.0  # how long a callee remembers a caller's proof
HELLO_TIMEOUT = 15.0


class SwarmKeyError(ValueError):
    """A swarm key file that cannot be read or is not a swarm key."""


class NotAMember(ConnectionError):
    """A peer did not prove that it holds the swarm key: no request goes to it (for a client, a failed server)."""


def new_swarm_key() -> str:
    """The text of a fresh swarm key file (256 random bits)."""
    return KEY_HEADER + secrets.token_hex(32) + "\n"


def swarm_key_text(secret: str) -> str:
    """A key file's text from what a user stored as the secret: a key file's text, or its 64 hex digits alone."""
    lines = [line.strip() for line in secret.strip().splitlines()]
    digits = lines[-1] if lines else ""
    hexadecimal = len(digits) == 64 and all(char in "0123456789abcdefABCDEF" for char in digits)
    if lines[:-1] not in ([], KEY_HEADER.split()) or not hexadecimal:
        raise SwarmKeyError("a swarm key is 64 hexadecimal digits, or a key file from `nectar dht --new-swarm-key`")
    return KEY_HEADER + digits.lower() + "\n"


def load_swarm_key(path: str | os.PathLike) -> bytes:
    """The 32 secret bytes of a swarm key file, or a ``SwarmKeyError`` that says what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError as error:
        raise SwarmKeyError(f"cannot read swarm key file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise SwarmKeyError(f"{path} is not a swarm key file (it is not text)") from None
    lines = [line.strip() for line in text.strip().splitlines()]
    if lines[:2] != KEY_HEADER.split() or len(lines) != 3:
        raise SwarmKeyError(f"{path} is not a swarm key file (make one with `nectar dht --new-swarm-key`)")
    try:
        key = bytes.fromhex(lines[2])
    except ValueError:
        raise SwarmKeyError(f"{path}: the key is not 64 hexadecimal digits") from None
    if len(key) != 32:
        raise SwarmKeyError(f"{path}: the key is not 64 hexadecimal digits")
    return key


def _proof(key: bytes, role: bytes, caller: PeerID, callee: PeerID, stamp: float) -> bytes:
    message = b"nectar/swarm-hello/1|" + role + b"|" + caller.to_bytes() + b"|" + callee.to_bytes()
    return hmac.new(key, message + struct.pack(">d", stamp), hashlib.sha256).digest()


class GuardedP2P(P2P):
    """A P2P peer of a private swarm: serves only proven members and calls only proven members.

    Create it with ``GuardedP2P.create(...)`` as a ``P2P``, then ``await guard(key)`` before adding handlers.
    """

    _swarm_key: bytes | None = None

    async def guard(self, swarm_key: bytes) -> None:
        self._swarm_key = hashlib.sha256(b"nectar/swarm-key/1|" + swarm_key).digest()  # never the raw key on a wire
        self._members: dict[PeerID, float] = {}  # callers that proved the key, until (monotonic)
        self._proven: dict[PeerID, float] = {}  # callees that proved it to us, until (monotonic)
        self._hellos: dict[PeerID, asyncio.Task] = {}
        await super()._add_protobuf_unary_handler(HELLO_PROTOCOL, self._answer_hello, runtime_pb2.ExpertRequest)

    # ---- the handshake ---------------------------------------------------------------------------------------

    async def _answer_hello(
        self, request: runtime_pb2.ExpertRequest, context: P2PContext
    ) -> runtime_pb2.ExpertResponse:
        """Check a caller's proof; remember it as a member and prove ourselves back, or refuse."""
        try:
            hello = msgpack.unpackb(request.metadata)
            stamp, proof = float(hello["t"]), bytes(hello["proof"])
        except Exception:
            raise PermissionError("malformed swarm hello") from None
        fresh = abs(get_dht_time() - stamp) <= MAX_CLOCK_SKEW
        expected = _proof(self._swarm_key, b"call", context.remote_id, self.peer_id, stamp)
        if not (fresh and hmac.compare_digest(proof, expected)):
            raise PermissionError("wrong swarm key (or clocks more than 5 minutes apart)")
        self._members[context.remote_id] = time.monotonic() + MEMBER_TTL
        answer = _proof(self._swarm_key, b"answer", context.remote_id, self.peer_id, stamp)
        return runtime_pb2.ExpertResponse(metadata=msgpack.packb({"proof": answer}))

    async def _say_hello(self, peer: PeerID) -> None:
        stamp = get_dht_time()
        request = runtime_pb2.ExpertRequest(
            metadata=msgpack.packb({"t": stamp, "proof": _proof(self._swarm_key, b"call", self.peer_id, peer, stamp)})
        )
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                response = await super()._call_unary_protobuf_handler(
                    peer, HELLO_PROTOCOL, request, runtime_pb2.ExpertResponse
                )
        except P2PHandlerError as error:  # it refused our proof, or does not speak the handshake
            raise NotAMember(f"peer {peer.to_base58()[-8:]} refused this swarm's key: {error}") from None
        try:
            proof = bytes(msgpack.unpackb(response.metadata)["proof"])
        except Exception:
            proof = b""
        if not hmac.compare_digest(proof, _proof(self._swarm_key, b"answer", self.peer_id, peer, stamp)):
            raise NotAMember(f"peer {peer.to_base58()[-8:]} does not hold this swarm's key")
        self._proven[peer] = time.monotonic() + PROVEN_TTL

    async def _ensure_proven(self, peer: PeerID) -> None:
        """Prove ourselves to ``peer`` (and it to us) unless done recently; concurrent calls share one hello."""
        if self._swarm_key is None or self._proven.get(peer, 0.0) > time.monotonic():
            return
        task = self._hellos.get(peer)
        if task is None or task.done():
            task = self._hellos[peer] = asyncio.create_task(self._say_hello(peer))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved by the awaiters
        await asyncio.shield(task)

    def _is_member(self, peer: PeerID) -> bool:
        return self._swarm_key is None or self._members.get(peer, 0.0) > time.monotonic()

    # ---- calls -----------------------------------------------------------------------------------------------

    async def _call_unary_protobuf_handler(self, peer_id, handle_name, input, output_protobuf_type):
        await self._ensure_proven(peer_id)
        try:
            return await super()._call_unary_protobuf_handler(peer_id, handle_name, input, output_protobuf_type)
        except P2PHandlerError as error:
            if self._swarm_key is None or REFUSED not in str(error):
                raise
        self._proven.pop(peer_id, None)  # the callee forgot us (it restarted): prove ourselves again, once
        await self._ensure_proven(peer_id)
        return await super()._call_unary_protobuf_handler(peer_id, handle_name, input, output_protobuf_type)

    async def call_binary_stream_handler(self, peer_id, handler_name):
        await self._ensure_proven(peer_id)
        return await super().call_binary_stream_handler(peer_id, handler_name)

    # ---- handlers --------------------------------------------------------------------------------------------

    async def _add_protobuf_unary_handler(self, handle_name, handler, input_protobuf_type, balanced=False):
        async def members_only(request, context: P2PContext):
            if not self._is_member(context.remote_id):
                raise PermissionError(REFUSED)
            return await handler(request, context)

        await super()._add_protobuf_unary_handler(handle_name, members_only, input_protobuf_type, balanced=balanced)

    async def add_binary_stream_handler(self, name, handler, balanced: bool = False) -> None:
        async def members_only(stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self._is_member(stream_info.peer_id):
                try:
                    await P2P.send_protobuf(RPCError(message=REFUSED), writer)
                except Exception:  # the outsider may be gone already
                    pass
                finally:
                    writer.close()
                return
            await handler(stream_info, reader, writer)

        await super().add_binary_stream_handler(name, members_only, balanced=balanced)
