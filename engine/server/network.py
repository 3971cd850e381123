"""A server's place in the network: listen, announce the addresses peers can dial, and prove that they can.

``join_network`` starts the server's libp2p peer, asks a peer of the swarm to dial it back and, when nobody can dial
it directly (a home behind NAT), restarts it as a client of the swarm's circuit relays (its bootstrap peers) and
checks again through them. A server that cannot be reached either way raises ``UnreachableError``, which says which
port to forward, and so announces nothing.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from hivemind.p2p import P2P

from engine.peer import start_peer
from engine.reachability import Reachability, ask_dial_back, circuit_addresses, direct_addresses
from engine.server.settings import ServerSettings
from engine.wire import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

RELAY_WAIT_S = 40.0  # libp2p reserves relay slots once it knows 4 candidate relays; with fewer, after minutes


class UnreachableError(RuntimeError):
    """No peer can dial this server, directly or through a relay."""


@dataclass
class Joined:
    p2p: P2P
    reachability: Reachability
    maddrs: list[str] = field(default_factory=list)  # checked addresses peers dial it at (direct or circuit)


def announce_maddrs(settings: ServerSettings) -> list[str] | None:
    """The address given with ``--announce-host``/``--announce-port``, or None to announce the listened ones."""
    if settings.announce_host is None:
        if settings.announce_port is not None:
            raise ValueError("--announce-port needs --announce-host")
        return None
    port = settings.announce_port or settings.port
    if not port:
        raise ValueError("--announce-host needs a fixed --port (or --announce-port): 0 picks a new port each start")
    try:
        version = ipaddress.ip_address(settings.announce_host).version
    except ValueError:
        return [f"/dns/{settings.announce_host}/tcp/{port}"]
    return [f"/ip{version}/{settings.announce_host}/tcp/{port}"]


def should_check(settings: ServerSettings) -> bool:
    """Whether to ask for a dial-back: never alone in a new swarm; by default only when listening beyond loopback."""
    if settings.reachability not in ("auto", "check", "skip"):
        raise ValueError(f"--reachability must be auto, check or skip, got {settings.reachability!r}")
    if settings.reachability == "skip" or not settings.initial_peers:
        return False
    return settings.reachability == "check" or not settings.host.startswith("127.")


async def _create(settings: ServerSettings, identity_path: str, swarm_key: bytes | None, **options) -> P2P:
    family = 6 if ":" in settings.host else 4
    return await start_peer(
        settings.initial_peers,
        swarm_key=swarm_key,
        host_maddrs=[f"/ip{family}/{settings.host}/tcp/{settings.port}"],
        announce_maddrs=announce_maddrs(settings),
        identity_path=identity_path,
        persistent_conn_max_msg_size=MAX_MESSAGE_BYTES,
        **options,
    )


async def join_network(settings: ServerSettings, identity_path: str, swarm_key: bytes | None = None) -> Joined:
    """The server's P2P peer (with the identity in ``identity_path``, guarded by ``swarm_key`` in a private swarm),
    listening and, where it was checked, reachable; raises ``UnreachableError``."""
    create = functools.partial(_create, settings, identity_path, swarm_key)
    p2p = await create(check_if_identity_free=settings.identity_path is not None)
    if not should_check(settings):
        return Joined(p2p, Reachability.UNKNOWN)
    try:
        maddrs = announce_maddrs(settings) or direct_addresses([str(a) for a in await p2p.get_visible_maddrs()])
        reached = await ask_dial_back(p2p, maddrs)
        if reached is None:
            logger.warning("no peer of the swarm answered a dial-back request: reachability unknown")
            return Joined(p2p, Reachability.UNKNOWN)
        if reached:
            logger.info("peers reach this server directly at %s", ", ".join(maddrs))
            return Joined(p2p, Reachability.DIRECT, [f"{maddr}/p2p/{p2p.peer_id.to_base58()}" for maddr in maddrs])
        reason = f"peers cannot dial this server at {', '.join(maddrs) or 'any address'}"
        if settings.no_relay:
            raise UnreachableError(_advice(settings, reason + " (and --no-relay is set)"))
    except BaseException:
        await p2p.shutdown()
        raise
    logger.info("%s; serving through the swarm's relays", reason)
    await p2p.shutdown()
    return await _join_through_relays(settings, reason, create)


async def _join_through_relays(settings: ServerSettings, reason: str, create) -> Joined:
    relays = circuit_addresses(settings.initial_peers)
    if not relays:
        raise UnreachableError(_advice(settings, reason + ", and no initial peer names its peer id to relay through"))
    p2p = await create(
        use_auto_relay=True,
        force_reachability="private",
        trusted_relays=settings.initial_peers,
        check_if_identity_free=False,  # the identity was ours a moment ago
    )
    try:
        deadline = time.monotonic() + RELAY_WAIT_S
        while time.monotonic() < deadline:
            if await ask_dial_back(p2p, relays):
                logger.info("peers reach this server through relays %s", ", ".join(relays))
                return Joined(p2p, Reachability.RELAY, relays)
            await asyncio.sleep(2.0)
        raise UnreachableError(_advice(settings, f"{reason}, and no relay took it in {RELAY_WAIT_S:.0f} s"))
    except BaseException:
        await p2p.shutdown()
        raise


def _advice(settings: ServerSettings, reason: str) -> str:
    port = settings.port or "PORT"
    return (
        f"this server cannot be reached: {reason}. Forward TCP port {port} on your router to this machine and "
        f"start with --host 0.0.0.0 --port {port} --announce-host YOUR_PUBLIC_ADDRESS, or join a swarm whose "
        "bootstrap peers relay (libp2p needs 4 of them to reserve at once). Nothing was announced."
    )
