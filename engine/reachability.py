"""Whether peers can dial a server, and how clients reach one that they cannot dial directly.

A joining server asks a peer it is connected to (``DialBack``, run by every server and bootstrap node) to open a
fresh connection to it: from a separate, new libp2p peer, so that the connection the server opened itself does not
count. A server behind NAT that nobody can dial serves through circuit relays: it reserves a slot on the swarm's
bootstrap peers (libp2p autorelay), announces the relays' circuit addresses in its record, and clients dial it
through them (``connect_via``). Hole punching is not offered: the p2pd of hivemind's wheel has no flag for it.

libp2p drops relay addresses it considers unroutable from what it advertises, so the record carries them instead;
and the Python multiaddr package writes the ``/p2p/`` part as a CID that p2pd cannot read, so ``_MaddrBytes``
writes it as the plain multihash that libp2p expects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import StrEnum

from hivemind.p2p import P2P, P2PContext, PeerID, ServicerBase
from hivemind.proto import runtime_pb2
from hivemind.utils.multiaddr import Multiaddr

from engine import wire

logger = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 8.0  # one dial-back attempt; a NAT drops the packets, so failure is a timeout
ASK_PEERS = 3  # peers asked in turn; the first that answers decides
MAX_CONCURRENT_DIALS = 2  # dial-back checks one node runs at once; the others wait
MAX_DIAL_ADDRESSES = 8  # addresses tried per check, and per server a client dials
_P2P_CODE, _CIRCUIT_CODE = bytes.fromhex("a503"), bytes.fromhex("a202")  # varints of multicodecs 421 and 290


class Reachability(StrEnum):
    DIRECT = "direct"  # peers dial this server's own addresses
    RELAY = "relay"  # peers reach it through circuit relays
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"  # nobody could check (a new swarm, or no peer answered)


class _MaddrBytes:
    """A multiaddr as p2pd's control protocol wants it (``to_bytes`` is all the client library calls)."""

    def __init__(self, text: str):
        parts = text.split("/p2p/")
        data = Multiaddr(parts[0]).to_bytes()
        for rest in parts[1:]:
            peer, _, tail = rest.partition("/")
            digest = PeerID.from_base58(peer).to_bytes()
            data += _P2P_CODE + _varint(len(digest)) + digest
            if tail == "p2p-circuit":
                data += _CIRCUIT_CODE
            elif tail:
                raise ValueError(f"unsupported multiaddr {text!r}")
        self.data, self.text = data, text

    def to_bytes(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def circuit_addresses(relays: Sequence[str]) -> list[str]:
    """The circuit addresses through ``relays`` (multiaddrs ending in ``/p2p/<relay id>``) of whoever reserved there."""
    return [f"{relay}/p2p-circuit" for relay in relays if "/p2p/" in relay and "p2p-circuit" not in relay]


def direct_addresses(maddrs: Sequence[str]) -> list[str]:
    """Addresses other machines could dial: neither loopback nor circuit; without the ``/p2p/`` suffix."""
    found = []
    for maddr in maddrs:
        text = str(maddr).split("/p2p/")[0]
        if "/ip4/127." in text or "/ip6/::1/" in text or "p2p-circuit" in str(maddr) or text in found:
            continue
        found.append(text)
    return found


async def connect_via(p2p: P2P, peer_id: str, maddrs: Sequence[str], timeout: float = DIAL_TIMEOUT_S) -> None:
    """Open a connection to ``peer_id`` at any of ``maddrs`` (circuit ones included); raises if none works."""
    addresses = [_MaddrBytes(text) for text in list(maddrs)[:MAX_DIAL_ADDRESSES]]
    async with asyncio.timeout(timeout):
        await p2p._client.connect(PeerID.from_base58(peer_id), addresses)  # noqa: SLF001 (P2P has no public connect)


class DialBack(ServicerBase):
    """Dials a peer back at the addresses it names, from a new libp2p peer: "can others reach me?"."""

    def __init__(self, max_concurrent: int = MAX_CONCURRENT_DIALS):
        self._slots = asyncio.Semaphore(max_concurrent)  # each check starts a p2pd: a flood must not start hundreds

    async def rpc_dial_back(
        self, request: runtime_pb2.ExpertRequest, context: P2PContext
    ) -> runtime_pb2.ExpertResponse:
        _, metadata = wire.unpack(request)
        maddrs = [str(item) for item in metadata.get("maddrs", [])][:MAX_DIAL_ADDRESSES]
        peer = context.remote_id.to_base58()  # only the asker itself is dialed: no dialing others on request
        async with self._slots:
            return wire.response(reached=await dial_from_outside(peer, maddrs))


async def dial_from_outside(peer_id: str, maddrs: Sequence[str], timeout: float = DIAL_TIMEOUT_S) -> bool:
    """Whether a brand-new peer on this machine can connect to ``peer_id`` at ``maddrs``."""
    if not maddrs:
        return False
    probe = await P2P.create(host_maddrs=[], use_relay=True, auto_nat=False, nat_port_map=False)
    try:
        await connect_via(probe, peer_id, maddrs, timeout)
        return True
    except Exception as error:  # a refused, dropped or timed-out dial: not reachable there
        logger.debug("dial-back to %s at %s failed: %s", peer_id[-8:], list(maddrs), error)
        return False
    finally:
        await probe.shutdown()


async def ask_dial_back(p2p: P2P, maddrs: Sequence[str], peers: Sequence[str] = ()) -> bool | None:
    """Whether a peer could dial this node at ``maddrs``; None when no peer answered the question."""
    if not peers:
        peers = [info.peer_id.to_base58() for info in await p2p.list_peers()]
    for peer in list(peers)[:ASK_PEERS]:
        stub = DialBack.get_stub(p2p, PeerID.from_base58(peer))
        try:
            answer = await stub.rpc_dial_back(wire.request(maddrs=list(maddrs)), timeout=3 * DIAL_TIMEOUT_S)
        except Exception as error:  # an old peer without the handler, or one that left: ask the next
            logger.debug("peer %s did not answer the dial-back: %s", peer[-8:], error)
            continue
        return bool(wire.unpack(answer)[1].get("reached", False))
    return None
