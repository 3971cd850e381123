"""A server process: load a span, join the DHT, announce it, serve RPCs, and leave cleanly on SIGTERM.

``Server`` holds what a running server is made of (P2P peer, DHT node, the span it hosts, the request handler,
its compute thread) and runs its life in order: ``start`` (join, measure, choose and load a span, announce),
``serve`` (until a signal; rebalancing meanwhile) and ``leave`` (drain, say goodbye, shut down).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import numpy as np
import torch
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from engine.identity import EphemeralIdentity, PeerKey
from engine.models.registry import get_family
from engine.peer import join_dht, signing_key
from engine.quantization import check_quantization
from engine.reachability import DialBack, Reachability
from engine.records import ServerRecord, ServerState, default_dht_prefix
from engine.rejoin import keep_joined, round_trip
from engine.server import placement
from engine.server.activations import ActivationStore
from engine.server.adapters import AdapterSet
from engine.server.backend import SpanBackend
from engine.server.control import ServerControl
from engine.server.executor import PriorityExecutor
from engine.server.handler import BlockServicer
from engine.server.link import SimulatedLink
from engine.server.memory import CacheBudget
from engine.server.network import announce_maddrs, join_network, should_check
from engine.server.precision import dtype_name, resolve_device, resolve_dtype
from engine.server.settings import ServerSettings, settings_fields
from engine.server.span_host import SpanHost
from engine.server.span_size import choose_num_blocks
from engine.server.throughput import NetworkProbe, announced_throughput, parse_throughput, server_throughput
from engine.signed_records import MAX_RECORD_TTL
from engine.swarm_key import load_swarm_key
from engine.weights import resolve_model

logger = logging.getLogger(__name__)

__all__ = ["Server", "ServerSettings", "parse_blocks", "run_server", "settings_fields"]


def parse_blocks(text: str | None, total: int) -> tuple[int, int]:
    if text is None:
        return 0, total
    try:
        start_text, end_text = text.split(":")
        start, end = int(start_text or 0), int(end_text or total)
    except ValueError:
        raise ValueError(f"--blocks must look like START:END, got {text!r}") from None
    if not 0 <= start < end <= total:
        raise ValueError(f"block range {start}:{end} is outside the model's blocks 0:{total}")
    return start, end


async def run_server(settings: ServerSettings, on_ready: Callable[[dict], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then announce leaving, let running steps finish, and exit."""
    server = Server(settings)
    info = await server.start()
    if on_ready is not None:
        on_ready(info)
    await server.serve()


class Server:
    """One server's parts and its life: ``start``, ``serve`` (returns after a signal and a clean ``leave``)."""

    def __init__(self, settings: ServerSettings):
        """Check every setting and read the model's config; nothing is loaded or joined yet."""
        if not settings.new_swarm and not settings.initial_peers:
            raise ValueError("give --initial-peers ADDR to join a swarm, or --new-swarm to start one")
        placement.check_settings(settings)
        if not 0 < settings.record_ttl <= MAX_RECORD_TTL:
            raise ValueError(f"--record-ttl must be in (0, {MAX_RECORD_TTL:.0f}] seconds, got {settings.record_ttl}")
        announce_maddrs(settings), should_check(settings)  # a bad address setting fails before loading anything
        check_quantization(settings.quant)
        self.settings = settings
        self.swarm_key = load_swarm_key(settings.swarm_key) if settings.swarm_key else None
        self.limits = settings.limits()
        self.mode = parse_throughput(settings.throughput)
        self.source = resolve_model(settings.model)
        config = self.source.config
        self.total = config.num_hidden_layers
        placement.check_num_blocks(settings.num_blocks, self.total)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device, config)
        self.prefix = settings.dht_prefix or default_dht_prefix(settings.model)
        self.max_length = min(settings.max_session_length, get_family(config).max_context(config))
        self.activations = ActivationStore(settings.training_cache_mb * 2**20)
        self.movable = settings.blocks is None and settings.rebalance_period > 0
        self.state = ServerState.JOINING
        self.rng = np.random.default_rng()
        self.p2p: P2P | None = None
        self.reachability, self.maddrs = Reachability.UNKNOWN, []
        self.swarm_rtt: float | None = None  # seconds of the quickest ping to a bootstrap peer
        self.node: DHTNode | None = None
        self.key: PeerKey | None = None  # signs this server's records
        self.host: SpanHost | None = None
        self.servicer: BlockServicer | None = None
        self.executor: PriorityExecutor | None = None
        self._tasks: list[asyncio.Task] = []
        self.control = ServerControl(settings.control_dir) if settings.control_dir else None
        if self.control is not None:
            self.control.read()

    @property
    def peer_id(self) -> str:
        return self.p2p.peer_id.to_base58()

    def _span_length(self) -> int:
        settings = self.settings
        if settings.blocks is not None:
            start, end = parse_blocks(settings.blocks, self.total)
            return end - start
        return settings.num_blocks or choose_num_blocks(
            self.source.config,
            self.dtype,
            str(self.device),
            settings.memory_budget,
            settings.cache_tokens,
            settings.max_request_tokens,
            self.activations.max_bytes,
            self.movable,
            settings.quant,
        )

    async def start(self) -> dict:
        """Join the P2P network and DHT, measure, choose and load the span, announce it; the ready info."""
        if self.settings.num_threads:
            torch.set_num_threads(self.settings.num_threads)
        length = self._span_length()
        ephemeral = EphemeralIdentity() if self.settings.identity_path is None else None  # a key Python can sign with
        try:
            joined = await join_network(self.settings, self.settings.identity_path or ephemeral.path, self.swarm_key)
        finally:
            if ephemeral is not None:
                ephemeral.remove()  # the daemon has read it: the key stays in memory only
        self.p2p, self.reachability, self.maddrs = joined.p2p, joined.reachability, joined.maddrs
        try:
            self.key = ephemeral.key if ephemeral is not None else signing_key(self.p2p, self.settings.identity_path)
            self.node = await join_dht(
                self.p2p,
                self.settings.initial_peers,
                client_mode=False,
                key=self.key,
                private=self.swarm_key is not None,
            )
            self._tasks.append(asyncio.create_task(keep_joined(self.p2p, self.node, self.settings.initial_peers)))
            self.swarm_rtt = await round_trip(self.node, self.settings.initial_peers)
            await self._load(length)
        except BaseException:
            await self._shutdown()
            raise
        self.state = ServerState.ONLINE
        await self.host.announce()
        self.executor = PriorityExecutor(
            max_queued=self.settings.max_queued_jobs,
            training_max_wait=self.settings.training_max_wait,
            job_timeout=self.settings.job_timeout,
            after_job=self.control.after_job if self.control is not None else None,
        )
        self.servicer = BlockServicer(
            self.host.switch,
            self.executor,
            self.describe,
            self.limits,
            self.settings.simulated_delay,
            batching=not self.settings.no_batching,
            link=SimulatedLink(self.settings.link_latency, self.settings.link_mbps),
        )
        await self.servicer.add_p2p_handlers(self.p2p)
        if self.movable and length < self.total:
            self._tasks.append(asyncio.create_task(self._rebalance()))
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self.control.run(self.control_status, self.host.announce)))
        maddrs = [str(addr) for addr in await self.p2p.get_visible_maddrs()]
        logger.info(
            "serving blocks %d:%d of %s as %s on %s in %s",
            self.host.start,
            self.host.end,
            self.prefix,
            self.peer_id,
            self.device,
            dtype_name(self.dtype),
        )
        return {"peer_id": self.peer_id, "blocks": [self.host.start, self.host.end], "maddrs": maddrs,
                "reachability": self.reachability.value, "announced": self.maddrs,
                "swarm_rtt_ms": None if self.swarm_rtt is None else round(1e3 * self.swarm_rtt, 1),
                "dht_prefix": self.prefix, "dtype": dtype_name(self.dtype), "device": str(self.device)}  # fmt: skip

    async def _load(self, length: int) -> None:
        """Measure throughput, pick the span (unless given), and load it while announcing it as joining."""
        await NetworkProbe().add_p2p_handlers(self.p2p)
        await DialBack().add_p2p_handlers(self.p2p)
        peers = lambda: placement.peers_in_swarm(self.node, self.prefix, self.total, self.peer_id, self.rng)  # noqa: E731
        self.measured = await server_throughput(
            self.mode, self.source, self.dtype, str(self.device), self.p2p, peers, quantization=self.settings.quant
        )
        self.throughput = announced_throughput(self.mode, self.measured, length)
        if self.settings.blocks is not None:
            start, _ = parse_blocks(self.settings.blocks, self.total)
        else:
            delay = 0.0 if self.settings.new_swarm else self.settings.max_join_delay
            start = await placement.join_start(
                self.node, self.prefix, self.total, length, self.throughput, self.peer_id, delay, self.rng
            )
        self.host = SpanHost(
            self.source,
            self.dtype,
            str(self.device),
            (start, start + length),
            self.cache_budget,
            self.make_backend,
            self.make_record,
            lambda: self.state,
            self.node,
            self.prefix,
            self.settings.record_ttl,
            self.settings.quant,
        )
        self._tasks.append(asyncio.create_task(self._announce_forever()))  # others count the span while it loads
        await self.host.load()

    def cache_budget(self, bytes_per_token: int) -> CacheBudget:
        """The attention-cache budget of a span whose blocks take ``bytes_per_token`` per cached token."""
        return CacheBudget(self.settings.cache_tokens * bytes_per_token, self.settings.peer_cache_share)

    def make_backend(self, span, budget: CacheBudget) -> SpanBackend:
        adapters = AdapterSet(span)
        for path in self.settings.adapters:
            logger.info("loaded adapter %s", adapters.load(path))
        return SpanBackend(span, budget, self.max_length, self.settings.max_request_tokens, adapters, self.activations)

    def make_record(self, span: tuple[int, int], state: ServerState) -> ServerRecord:
        backend = self.host.switch if self.host is not None else None
        scale = self.control.throttle.throughput_scale if self.control is not None else 1.0  # throttled looks slower
        return ServerRecord(
            peer_id=self.peer_id,
            start=span[0],
            end=span[1],
            state=state,
            throughput=self.throughput * scale,
            inference_rps=self.measured.inference_rps * scale,
            free_cache_tokens=backend.free_cache_tokens if backend is not None else 0,
            max_request_tokens=self.settings.max_request_tokens,
            dtype=dtype_name(self.dtype),
            quantization=self.settings.quant,
            adapters=tuple(backend.adapters.names) if backend is not None else (),
            maddrs=tuple(self.maddrs),
        )

    def describe(self) -> dict:
        """What ``info`` answers: the current record, the model's swarm name and the session limits."""
        record = self.make_record((self.host.start, self.host.end), self.state)
        return {
            **record.to_dict(),
            "model": self.prefix,
            "max_session_length": self.max_length,
            "session_idle_timeout": self.limits.session_idle_timeout,
            "step_batches": self.servicer.batcher.batches,  # batched forwards of several sessions' steps
            "largest_step_batch": self.servicer.batcher.largest,
        }

    def control_status(self) -> dict:
        """What the control channel's status file says: the current record and the open sessions."""
        record = self.make_record((self.host.start, self.host.end), self.state)
        return {**record.to_dict(), "sessions_open": self.servicer.active_sessions}

    async def _announce_forever(self) -> None:
        while True:
            await self.host.announce()
            await asyncio.sleep(self.settings.announce_period)

    async def _rebalance(self) -> None:
        async def move(new_start: int) -> None:
            can_leave = lambda leaving: placement.can_leave(self.node, self.prefix, self.total, self.peer_id, leaving)  # noqa: E731
            await self.host.move_to(new_start, can_leave)

        await placement.rebalance_forever(
            self.node,
            self.prefix,
            self.total,
            self.host.current_placement,
            move,
            self.settings.rebalance_period,
            self.settings.balance_quality,
            self.rng,
        )

    async def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then ``leave``."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await self.leave()

    async def leave(self) -> None:
        """Leave without dropping work: refuse new work, say so in the DHT, finish the steps in flight, say goodbye.

        Clients see ``draining`` and stop routing here; a client whose session was here gets an "unavailable" answer
        to its next step and replays its session elsewhere. ``offline`` makes clients forget this server at once.
        """
        for task in self._tasks:
            task.cancel()
        servicer = self.servicer
        logger.info("leaving: %d sessions open, %d steps in flight", servicer.active_sessions, servicer.steps_in_flight)
        servicer.accepting = False
        self.state = ServerState.DRAINING
        await self._announce_or_warn("draining")
        if not await servicer.drain(self.settings.drain_timeout):
            logger.warning(
                "%d steps still run after %.0f s; leaving anyway", servicer.steps_in_flight, self.settings.drain_timeout
            )
        await asyncio.sleep(0.2)  # the last answers are written after their handlers return: let them go out
        self.state = ServerState.OFFLINE
        await self._announce_or_warn("offline")
        if self.control is not None:
            self.control.write_status(self.control_status())  # the last steps count too
        await servicer.remove_p2p_handlers(self.p2p)
        self.executor.shutdown()
        await self._shutdown()

    async def _announce_or_warn(self, what: str) -> None:
        try:
            await asyncio.wait_for(self.host.announce(), 5)
        except Exception as error:  # leaving must not hang on an unreachable DHT
            logger.warning("could not announce %s: %s", what, error)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.node is not None:
            await self.node.shutdown()
        if self.p2p is not None:
            await self.p2p.shutdown()
