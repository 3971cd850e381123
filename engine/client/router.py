"""The stateful side of routing for one swarm connection: fresh DHT views, bans and measured round trips.

``routing.py`` decides; this module gathers what the decisions need, on the swarm loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError, P2PHandlerError

from engine.client.answers import BadAnswer
from engine.client.bans import BanList
from engine.client.config import ClientSettings
from engine.client.pinger import Pinger
from engine.client.routing import (
    Hop,
    MissingBlocksError,
    inference_route,
    make_route,
    missing_blocks,
    precise_enough,
    serving_adapter,
)
from engine.client.speeds import SpeedBook
from engine.client.spot_check import SpotChecker, second_route
from engine.records import ServerRecord, ServerState, spans_of
from engine.wire import RemoteError

if TYPE_CHECKING:
    from engine.client.swarm import SwarmConnection

logger = logging.getLogger(__name__)

# What a broken, hanging, lying or leaving server looks like to a client. A RemoteError is the server's verdict on
# the request (the client's fault) unless the server says it is unavailable (busy, leaving).
_SERVER_FAULTS = (ConnectionError, TimeoutError, OSError, EOFError, P2PDaemonError, P2PHandlerError, BadAnswer)


def is_server_fault(error: BaseException) -> bool:
    """True if another server may succeed where this one failed; False if the request itself was wrong."""
    if isinstance(error, RemoteError):
        return error.unavailable
    return isinstance(error, _SERVER_FAULTS)


class Router:
    """Chooses chains from a fresh DHT view, measured round trips and the ban list; one per ``SwarmConnection``."""

    def __init__(self, swarm: SwarmConnection, settings: ClientSettings, rng: random.Random | None = None):
        self.swarm, self.settings = swarm, settings
        self.bans = BanList(settings.ban_base, settings.ban_max)
        self.pinger = Pinger(swarm.p2p, settings.ping_period, settings.ping_timeout, settings.rtt_smoothing)
        self.rng = rng or random.Random()
        self.speeds = SpeedBook()  # measured throughputs: routing believes no more than these
        self._last_view: dict[int, list[ServerRecord]] = {}
        self.spot = SpotChecker(settings.spot_check_fraction, settings.spot_check_tolerance, random.Random())
        self._read_at: dict[int, float] = {}  # block -> when its records were last read from the DHT

    def _recent(self, start: int, end: int) -> dict[int, list[ServerRecord]] | None:
        """The last view of [start, end) if every block was read within ``view_max_age`` and has an online server."""
        oldest = time.monotonic() - self.settings.view_max_age
        if all(
            self._read_at.get(index, -1.0) >= oldest
            and any(record.state == ServerState.ONLINE for record in self._last_view.get(index, ()))
            for index in range(start, end)
        ):
            return {index: self._last_view[index] for index in range(start, end)}
        return None

    async def view(self, start: int, end: int) -> dict[int, list[ServerRecord]]:
        """Records of blocks [start, end): the view read within ``view_max_age`` (a DHT read costs a round trip
        to several peers, as much as a whole forward of a small span), else read afresh from the DHT; the last
        view if the DHT does not answer in time."""
        self.pinger.start()
        recent = self._recent(start, end)
        if recent is not None:
            return recent
        began = time.monotonic()
        try:
            blocks = await asyncio.wait_for(self.swarm.read_blocks(start, end), self.settings.dht_timeout)
        except TimeoutError:
            logger.warning("the DHT did not answer in %.0f s; routing from the last view", self.settings.dht_timeout)
            blocks = {index: self._last_view.get(index, []) for index in range(start, end)}
        else:
            self._read_at.update(dict.fromkeys(blocks, began))
        self._last_view.update(blocks)
        self.pinger.peers = set(spans_of(self._last_view))
        return blocks

    async def inference_chain(
        self, start: int, end: int, cache_tokens: int, excluded: set[str], adapter: str | None = None
    ) -> list[Hop]:
        """Lowest-latency chain over [start, end) for a session needing ``cache_tokens`` tokens of cache per server."""
        blocks = self._eligible(await self.view(start, end), start, end, adapter)
        banned = self.bans.banned()
        candidates = {
            record.peer_id
            for records in blocks.values()
            for record in records
            if record.state == ServerState.ONLINE and record.peer_id not in excluded and record.peer_id not in banned
        }
        await self.pinger.measure_unknown(candidates)
        return inference_route(
            blocks,
            start,
            end,
            self.pinger.estimates(),
            default_rtt=self.settings.ping_timeout,
            banned=banned,
            excluded=excluded,
            cache_tokens=cache_tokens,
        )

    async def training_chain(self, start: int, end: int, adapter: str | None = None) -> list[Hop]:
        """A chain over [start, end) for forward/backward: load spread by throughput, banned servers last."""
        blocks = self._eligible(await self.view(start, end), start, end, adapter)
        banned = self.bans.banned()
        try:
            return make_route(blocks, start, end, banned, self.rng)
        except MissingBlocksError:
            if not banned:
                raise
            return make_route(blocks, start, end, (), self.rng)  # only banned servers left: better than nothing

    async def second_route(self, hop: Hop, avoid: Collection[str], adapter: str | None = None) -> list[Hop] | None:
        """Another route over exactly ``hop``'s blocks, for a spot-check: no banned server, none of ``avoid``, the
        same quantization as ``hop``'s server. None when the swarm has no such route."""
        try:
            blocks = self._eligible(await self.view(hop.start, hop.end), hop.start, hop.end, adapter)
        except MissingBlocksError:
            return None
        return second_route(blocks, hop, {*avoid, *self.bans.banned()}, self.rng)

    def _eligible(
        self, blocks: dict[int, list[ServerRecord]], start: int, end: int, adapter: str | None
    ) -> dict[int, list[ServerRecord]]:
        """Servers precise enough for this client and holding ``adapter``; says which condition leaves a gap."""
        minimum = self.settings.min_precision
        precise = precise_enough(blocks, minimum)
        if not missing_blocks(blocks, start, end):
            missing = missing_blocks(precise, start, end)
            if missing:
                raise MissingBlocksError(missing, f"no server there has weights at least as precise as {minimum}")
        return self.speeds.trusted_blocks(self._with_adapter(precise, start, end, adapter))

    @staticmethod
    def _with_adapter(
        blocks: dict[int, list[ServerRecord]], start: int, end: int, adapter: str | None
    ) -> dict[int, list[ServerRecord]]:
        """Only servers that hold LoRA ``adapter``; says so when it is the adapter that leaves blocks uncovered."""
        serving = serving_adapter(blocks, adapter)
        if adapter is not None and not missing_blocks(blocks, start, end):
            missing = missing_blocks(serving, start, end)
            if missing:
                raise MissingBlocksError(missing, f"no server there serves adapter {adapter!r}")
        return serving

    def recover(self, hop: Hop, error: Exception, budget: RetryBudget) -> None:
        """The one answer to a failed request: re-raise the request's own errors; else ban the server that failed
        and count the failure against ``budget`` (which raises, naming the blocks, once it is spent)."""
        if not is_server_fault(error):
            raise error
        self.failed(hop, error)
        budget.spend(range(hop.start, hop.end), error)

    def failed(self, hop: Hop, error: BaseException) -> None:
        """Ban a server that failed (connection lost, timeout, unavailable)."""
        self._read_at.clear()  # the swarm changed (a server left or broke): route from a fresh view
        duration = self.bans.ban(hop.peer_id)
        self.pinger.record_failure(hop.peer_id)  # still avoided after the ban, until it answers a ping again
        logger.warning(
            "server %s failed on blocks %d:%d (%s); avoiding it for %.3g s",
            hop.peer_id[-8:],
            hop.start,
            hop.end,
            describe_error(error),
            duration,
        )

    def served(self, peer: str) -> None:
        self.bans.forgive(peer)

    async def close(self) -> None:
        await self.pinger.stop()


def describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


class RetryBudget:
    """How many server failures one operation (a step, a forward, a backward) may still survive."""

    def __init__(self, retries: int):
        self.retries = self.left = retries

    def spend(self, blocks: range, error: BaseException) -> None:
        """Count one failure; raises once the budget is exhausted, naming the blocks, the server and its cause.

        ``error`` names its server: every error a server causes here starts with "server <id>".
        """
        if self.left <= 0:
            raise MissingBlocksError(
                list(blocks),
                f"{describe_error(error)} (gave up after {self.retries + 1} failed attempts)",
                headline="servers failed on",
            ) from error
        self.left -= 1
