"""``SwarmWatcher``: reads the swarm's DHT every few seconds for the coverage plot and the status's coverage.

One client connection (``engine.client.swarm.SwarmConnection``) kept open on a thread of its own, so the API
answers from the last reading at once and a slow or unreachable swarm never delays it. The reading says which
spans are this agent's own servers (their peer ids come from the servers' status files).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from agent.api.models import SwarmMap, SwarmServer
from agent.state import AgentState

logger = logging.getLogger(__name__)

PERIOD_SECONDS = 5.0
READ_TIMEOUT = 30.0


class SwarmWatcher:
    """A part of the agent: ``start()`` begins reading once the swarm's initial peers are known."""

    def __init__(self, state: AgentState, initial_peers: Callable[[], list[str]], period: float = PERIOD_SECONDS):
        self.state, self.initial_peers, self.period = state, initial_peers, period
        self.map = SwarmMap(detail="reading the swarm...")
        self._connection = None
        self._num_blocks: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nectar-swarm-watch", daemon=True)

    def start(self) -> None:
        self.state.swarm_watcher = self
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(READ_TIMEOUT + 5)
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.map = self._read()
            except Exception as error:  # the swarm may be unreachable for a while: say so, retry, never crash
                logger.info("reading the swarm failed: %s", error)
                self.map = self.map.model_copy(update={"detail": f"cannot read the swarm: {error}"})
                self._close()
            self._stop.wait(self.period)

    def _read(self) -> SwarmMap:
        from engine.records import ServerState, default_dht_prefix
        from engine.swarm_view import build_view

        settings = self.state.settings.swarm
        prefix = settings.dht_prefix or default_dht_prefix(settings.model)
        peers = self.initial_peers()
        if not peers:
            return SwarmMap(name=settings.name, model=settings.model, detail="the swarm has not started yet")
        if self._connection is None or self._connection.dht_prefix != prefix:
            from engine.client.swarm import SwarmConnection

            self._close()
            self._connection = SwarmConnection(peers, prefix)
        num_blocks = self._blocks_of(settings.model)
        records = self._connection.run(self._connection.read_blocks(0, num_blocks or 512), timeout=READ_TIMEOUT)
        if num_blocks is None:  # model not readable here: the highest block anybody announces
            num_blocks = max((record.end for held in records.values() for record in held), default=0)
        if num_blocks == 0:
            return SwarmMap(name=settings.name, model=settings.model, read_at=time.time(), detail="no server announced")
        view = build_view(prefix, num_blocks, records)
        ours = own_peer_ids(self.state)
        servers = [
            SwarmServer(
                peer_id=span.peer_id,
                start=span.start,
                end=span.end,
                state=span.state,
                throughput=span.throughput if span.state == str(ServerState.ONLINE) else 0.0,
                ours=span.peer_id in ours,
            )
            for span in view.spans
        ]
        self.state.update_swarm(servers=view.num_servers, coverage=1 - len(view.uncovered) / num_blocks)
        return SwarmMap(
            name=settings.name,
            model=settings.model,
            num_blocks=num_blocks,
            block_throughput=[block.throughput for block in view.blocks],
            servers=servers,
            uncovered=view.uncovered,
            read_at=time.time(),
        )

    def _blocks_of(self, model: str) -> int | None:
        if self._num_blocks is None:
            try:
                from engine.weights import resolve_model

                self._num_blocks = int(resolve_model(model).config.num_hidden_layers)
            except Exception as error:  # a remote model this machine does not have: count from the records
                logger.debug("cannot read the model's block count: %s", error)
        return self._num_blocks

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection must not stop the agent
                logger.debug("closing the swarm connection failed", exc_info=True)


def own_peer_ids(state: AgentState) -> set[str]:
    """Peer ids of this agent's servers, from their status files (``engine/server/control.py``)."""
    ids = {state.server.peer_id} if state.server.peer_id else set()
    for status_file in (state.paths.data_dir / "servers").glob("*/status.json"):
        try:
            ids.add(str(json.loads(status_file.read_text())["peer_id"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return ids
