"""Joining a swarm: the P2P daemon and the DHT node, with the record validation every peer of a swarm runs.

Servers, clients and bootstrap nodes all join here, so none of them can forget to check records. A peer that
announces (a server) also gets the private key of its identity, which signs its records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from engine.identity import EphemeralIdentity, IdentityError, PeerKey
from engine.signed_records import SignedRecordValidator
from engine.swarm_key import GuardedP2P


class SwarmJoinError(ConnectionError):
    """No initial peer let this peer in: wrong addresses, or a private swarm without (the right) key."""


async def start_peer(initial_peers: Sequence[str], *, swarm_key: bytes | None = None, **p2p_options: Any) -> P2P:
    """The P2P daemon; with ``swarm_key`` (see ``engine.swarm_key``) it serves and calls only peers that hold the same
    key. ``p2p_options`` go to ``P2P.create``."""
    p2p = await (P2P if swarm_key is None else GuardedP2P).create(initial_peers=list(initial_peers), **p2p_options)
    if swarm_key is not None:
        try:
            await p2p.guard(swarm_key)
        except BaseException:
            await p2p.shutdown()
            raise
    return p2p


def signing_key(p2p: P2P, identity_path: str) -> PeerKey:
    """The private key of ``identity_path``, which must be the identity the daemon runs with."""
    key = PeerKey.load(identity_path)
    if key.peer_id != p2p.peer_id.to_base58():
        raise IdentityError(f"the key in {identity_path} does not match the peer id the daemon uses")
    return key


async def join_dht(
    p2p: P2P, initial_peers: Sequence[str], *, client_mode: bool, key: PeerKey | None, private: bool
) -> DHTNode:
    """A DHT node over ``p2p`` that validates records (and signs its own with ``key``)."""
    try:
        return await DHTNode.create(
            p2p=p2p,
            initial_peers=list(initial_peers),
            client_mode=client_mode,
            record_validator=SignedRecordValidator(key),
        )
    except RuntimeError as error:
        if "bootstrap failed" not in str(error):
            raise
        raise SwarmJoinError(
            "could not join the swarm: no initial peer answered (check --initial-peers; "
            + ("is --swarm-key the swarm's key?)" if private else "a private swarm also needs its --swarm-key)")
        ) from None


async def join_swarm(
    initial_peers: Sequence[str],
    *,
    client_mode: bool,
    signing: bool = False,
    identity_path: str | None = None,
    swarm_key: bytes | None = None,
    **p2p_options: Any,
) -> tuple[P2P, DHTNode, PeerKey | None]:
    """Start the P2P daemon and a DHT node that validates records; with ``signing``, also this peer's key.

    A signing peer without ``identity_path`` gets a fresh identity whose key Python keeps (the daemon's own made-up
    key would be out of reach).
    """
    ephemeral = EphemeralIdentity() if signing and identity_path is None else None
    if ephemeral is not None:
        identity_path = ephemeral.path
        p2p_options["check_if_identity_free"] = False
    try:
        p2p = await start_peer(initial_peers, swarm_key=swarm_key, identity_path=identity_path, **p2p_options)
    finally:
        if ephemeral is not None:
            ephemeral.remove()  # the daemon has read it (or failed): the key stays in memory only
    try:
        key = None
        if signing:
            key = ephemeral.key if ephemeral is not None else signing_key(p2p, identity_path)
        node = await join_dht(p2p, initial_peers, client_mode=client_mode, key=key, private=swarm_key is not None)
    except BaseException:
        await p2p.shutdown()
        raise
    return p2p, node, key
