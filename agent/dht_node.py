"""A standalone DHT node that a swarm bootstraps from (``nectar dht``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from engine.peer import join_swarm
from engine.reachability import DialBack
from engine.rejoin import keep_joined


async def run_dht_node(
    host: str = "127.0.0.1",
    port: int = 0,
    initial_peers: list[str] | None = None,
    identity_path: str | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
    swarm_key: bytes | None = None,
) -> None:
    """Serve the DHT (of a private swarm, with ``swarm_key``) until SIGINT/SIGTERM; ``on_ready`` gets the multiaddrs
    that others join with."""
    p2p, node, _ = await join_swarm(
        initial_peers or [],
        client_mode=False,
        identity_path=identity_path,
        swarm_key=swarm_key,
        host_maddrs=[f"/ip4/{host}/tcp/{port}"],
    )
    await DialBack().add_p2p_handlers(p2p)  # joining servers ask whether they can be reached
    rejoin = asyncio.create_task(keep_joined(p2p, node, initial_peers or []))  # bootstrap peers restart too
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    maddrs = [str(addr) for addr in await p2p.get_visible_maddrs()]
    if on_ready is not None:
        on_ready(maddrs)
    try:
        await stop.wait()
    finally:
        rejoin.cancel()
        await node.shutdown()
        await p2p.shutdown()
