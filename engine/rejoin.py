"""Stay joined to a swarm: greet its bootstrap peers again and again, so that a restarted one learns of us.

A bootstrap node that restarts comes back with an empty routing table under the same peer id: the nodes that knew
it would never tell it about themselves, and clients asking it would find nobody. ``keep_joined`` pings every
bootstrap peer each ``period`` (a ping also asks the peer to add the pinger to its routing table), dialing its
address afresh when the ping finds no connection. Bootstrap peers that are down cost one failed dial per period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P, PeerID

from engine.reachability import connect_via

logger = logging.getLogger(__name__)

REJOIN_PERIOD_S = 10.0
DIAL_TIMEOUT_S = 5.0


def peer_of(maddr: str) -> str | None:
    """The peer id at the end of a bootstrap multiaddr, or None when it names none."""
    _, found, peer = maddr.rpartition("/p2p/")
    return peer.split("/")[0] if found and peer else None


async def greet(p2p: P2P, node: DHTNode, maddrs: Sequence[str]) -> int:
    """Ping each bootstrap peer (dialing it again where needed); how many answered."""

    async def one(maddr: str) -> bool:
        peer = peer_of(maddr)
        if peer is None or peer == p2p.peer_id.to_base58():
            return False
        if await node.protocol.call_ping(PeerID.from_base58(peer)) is not None:
            return True
        try:
            await connect_via(p2p, peer, [maddr], DIAL_TIMEOUT_S)
        except Exception as error:  # down, or not back yet
            logger.debug("bootstrap peer %s does not answer: %s", peer[-8:], error)
            return False
        return await node.protocol.call_ping(PeerID.from_base58(peer)) is not None

    answers = await asyncio.gather(*(one(maddr) for maddr in maddrs), return_exceptions=True)
    return sum(answer is True for answer in answers)


async def round_trip(node: DHTNode, maddrs: Sequence[str]) -> float | None:
    """Seconds of the quickest DHT ping to a bootstrap peer: the round trip to the swarm; None if none answers."""
    best = None
    for maddr in maddrs:
        peer = peer_of(maddr)
        if peer is None:
            continue
        began = time.perf_counter()
        if await node.protocol.call_ping(PeerID.from_base58(peer)) is not None:
            elapsed = time.perf_counter() - began
            best = elapsed if best is None else min(best, elapsed)
    return best


async def keep_joined(p2p: P2P, node: DHTNode, maddrs: Sequence[str], period: float = REJOIN_PERIOD_S) -> None:
    """Greet the bootstrap peers every ``period`` seconds, forever; says when none answers and when one is back."""
    alone = False
    while True:
        await asyncio.sleep(period)
        answered = await greet(p2p, node, maddrs)
        if not answered and not alone and maddrs:
            logger.warning("none of the %d bootstrap peers answers; retrying every %.0f s", len(maddrs), period)
        elif answered and alone:
            logger.info("rejoined the swarm: %d of %d bootstrap peers answer", answered, len(maddrs))
        alone = not answered
