"""A standalone DHT node that a swarm bootstraps from (``nectar dht``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from engine.reachability import DialBack
from engine.rejoin import keep_joined


async def run_dht_node(
    host: str = "127.0.0.1",
    port: int = 0,
    initial_peers: list[str] | None = None,
    identity_path: str | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve the DHT until SIGINT/SIGTERM; ``on_ready`` gets the multiaddrs that others join with."""
    p2p = await P2P.create(
        initial_peers=initial_peers or [], host_maddrs=[f"/ip4/{host}/tcp/{port}"], identity_path=identity_path
    )
    node = await DHTNode.create(p2p=p2p, initial_peers=initial_peers or [])
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
