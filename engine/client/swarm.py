"""A client's connection to the swarm: a P2P peer and a client-mode DHT node on their own event loop thread.

The caller's thread (a CLI, a training loop, a GUI worker) never runs the network itself: it hands
coroutines to this loop and waits for them, with a timeout where one makes sense.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from engine import records
from engine.client.config import ClientSettings
from engine.client.router import Router
from engine.peer import join_swarm
from engine.reachability import connect_via
from engine.records import ServerRecord
from engine.rejoin import keep_joined
from engine.swarm_key import load_swarm_key
from engine.wire import MAX_MESSAGE_BYTES

T = TypeVar("T")
logger = logging.getLogger(__name__)
DIAL_TIMEOUT_S = 5.0  # a server that cannot be dialed in this time is left to the router's bans


class SwarmConnection:
    """Owns the background loop, the P2P daemon, the DHT node and the router (bans, pings) shared by every
    session and forward/backward of this client; close it (or use ``with``) to stop them."""

    def __init__(
        self,
        initial_peers: Sequence[str],
        dht_prefix: str,
        start_timeout: float = 60.0,
        settings: ClientSettings | None = None,
    ):
        if not initial_peers:
            raise ValueError("give at least one initial peer (the address printed by `nectar dht` or a server)")
        self.dht_prefix = dht_prefix
        self.settings = settings or ClientSettings()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nectar-swarm", daemon=True)
        self._thread.start()
        try:
            swarm_key = load_swarm_key(self.settings.swarm_key) if self.settings.swarm_key else None
            self.p2p, self.node = self.run(self._start(list(initial_peers), swarm_key), timeout=start_timeout)
            asyncio.run_coroutine_threadsafe(keep_joined(self.p2p, self.node, list(initial_peers)), self.loop)
        except BaseException:
            self._stop_loop()
            raise
        self.router = Router(self, self.settings)

    @staticmethod
    async def _start(initial_peers: list[str], swarm_key: bytes | None) -> tuple[P2P, DHTNode]:
        p2p, node, _ = await join_swarm(
            initial_peers, client_mode=True, swarm_key=swarm_key, persistent_conn_max_msg_size=MAX_MESSAGE_BYTES
        )
        return p2p, node

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the swarm loop and wait for its result (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def read_blocks(self, start: int, end: int) -> dict[int, list[ServerRecord]]:
        """The blocks' records; servers that announce addresses are connected on the way, so they can be called."""
        blocks = await records.read_blocks(self.node, self.dht_prefix, range(start, end))
        await self._connect(records.spans_of(blocks).values())
        return blocks

    async def _connect(self, servers) -> None:
        """Dial servers with announced addresses that are not connected yet: libp2p's own peer routing finds no
        circuit addresses, and drops addresses it deems unroutable."""
        dialable = [record for record in servers if record.maddrs and record.state != records.ServerState.OFFLINE]
        if not dialable:
            return
        connected = {info.peer_id.to_base58() for info in await self.p2p.list_peers()}
        todo = [record for record in dialable if record.peer_id not in connected]
        results = await asyncio.gather(
            *(connect_via(self.p2p, record.peer_id, record.maddrs, DIAL_TIMEOUT_S) for record in todo),
            return_exceptions=True,
        )
        for record, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                logger.info("could not dial %s at %s: %s", record.peer_id[-8:], list(record.maddrs), result)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self._shutdown(), timeout=15)
        finally:
            self._stop_loop()

    async def _shutdown(self) -> None:
        await self.router.close()
        await self.node.shutdown()
        await self.p2p.shutdown()
        # background tasks of the DHT node (refresh timers) would be destroyed pending when the loop stops
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> SwarmConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
