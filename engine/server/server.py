"""A server process: load a span, join the DHT, announce it, serve RPCs, and leave cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from engine.models.registry import get_family
from engine.records import ServerRecord, ServerState, default_dht_prefix
from engine.server import placement
from engine.server.activations import ActivationStore
from engine.server.adapters import AdapterSet
from engine.server.backend import SpanBackend
from engine.server.control import ServerControl
from engine.server.executor import PriorityExecutor
from engine.server.handler import BlockServicer
from engine.server.memory import CacheBudget
from engine.server.span_host import SpanHost
from engine.server.span_size import choose_num_blocks
from engine.server.throughput import NetworkProbe, announced_throughput, parse_throughput, server_throughput
from engine.weights import resolve_model
from engine.wire import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ServerSettings:
    """Every knob of a server; the CLI is derived from these fields (``help`` metadata)."""

    model: str = field(metadata={"help": "model directory, .gguf file, cached repo id, or alias"})
    initial_peers: list[str] = field(default_factory=list, metadata={"help": "multiaddrs of DHT peers to join"})
    new_swarm: bool = field(default=False, metadata={"help": "start a new swarm instead of joining one"})
    blocks: str | None = field(
        default=None, metadata={"help": "span to serve as START:END (default: chosen by the server, see --num-blocks)"}
    )
    num_blocks: int | None = field(
        default=None,
        metadata={"help": "without --blocks: how many blocks to serve (default: as many as fit --memory-budget)"},
    )
    memory_budget: float | None = field(
        default=None,
        metadata={
            "help": "GiB for blocks and attention caches when choosing --num-blocks (default: half the available "
            "RAM on CPU, the free GPU memory on a GPU)"
        },
    )
    throughput: str = field(
        default="auto",
        metadata={
            "help": "auto (measure once, then reuse the cached measurement), eval (measure now), or the number "
            "of tokens/s this server adds to each of its blocks, announced as given"
        },
    )
    balance_quality: float = field(
        default=0.75,
        metadata={
            "help": "without --blocks: move only if that raises the swarm's bottleneck throughput above "
            "current / q (or the bottleneck is below q x the mean); in (0, 1], 1 moves for any gain"
        },
    )
    rebalance_period: float = field(
        default=120.0, metadata={"help": "without --blocks: mean seconds between rebalancing checks (0: never move)"}
    )
    max_join_delay: float = field(
        default=5.0,
        metadata={"help": "without --blocks: longest random wait before choosing a span, so that joins spread"},
    )
    port: int = field(default=0, metadata={"help": "TCP port to listen on (0: any free port)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda:0"})
    dtype: str = field(default="auto", metadata={"help": "float32, bfloat16, float16 or auto"})
    dht_prefix: str | None = field(default=None, metadata={"help": "swarm name of the model (default: derived)"})
    cache_tokens: int = field(default=16384, metadata={"help": "attention-cache budget, in tokens of the span"})
    max_session_length: int = field(default=2048, metadata={"help": "longest session a client may open (tokens)"})
    max_request_tokens: int = field(default=8192, metadata={"help": "batch x tokens a forward/backward may carry"})
    announce_period: float = field(default=30.0, metadata={"help": "seconds between DHT record refreshes"})
    record_ttl: float = field(default=90.0, metadata={"help": "seconds a record lives without refresh"})
    step_timeout: float = field(default=300.0, metadata={"help": "seconds a session may stay silent"})
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)"})
    identity_path: str | None = field(default=None, metadata={"help": "private key file: a stable peer id"})
    drain_timeout: float = field(
        default=30.0, metadata={"help": "seconds a leaving server waits for the steps in flight before it exits"}
    )
    simulated_delay: float = field(
        default=0.0, metadata={"help": "seconds added to every RPC answer; for testing and simulating slow links only"}
    )
    adapters: list[str] = field(
        default_factory=list, metadata={"help": "PEFT LoRA adapter directories to serve (named by directory)"}
    )
    training_cache_mb: int = field(
        default=1024, metadata={"help": "MiB of activations kept from a forward for its backward (0: recompute)"}
    )
    control_dir: str | None = field(
        default=None,
        metadata={"help": "directory of the throttle file this server follows and the status file it writes"},
    )


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


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]


async def run_server(settings: ServerSettings, on_ready: Callable[[dict], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then announce leaving, let running steps finish, and exit."""
    if not settings.new_swarm and not settings.initial_peers:
        raise ValueError("give --initial-peers ADDR to join a swarm, or --new-swarm to start one")
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    placement.check_settings(settings)
    mode = parse_throughput(settings.throughput)
    source = resolve_model(settings.model)
    config = source.config
    total = config.num_hidden_layers
    placement.check_num_blocks(settings.num_blocks, total)
    dtype = resolve_dtype(settings.dtype, settings.device)
    prefix = settings.dht_prefix or default_dht_prefix(settings.model)
    if settings.blocks is not None:
        start, end = parse_blocks(settings.blocks, total)
        length = end - start
    else:
        length = settings.num_blocks or choose_num_blocks(
            config, dtype, settings.device, settings.memory_budget, settings.cache_tokens, settings.max_request_tokens
        )
    max_length = min(settings.max_session_length, get_family(config).max_context(config))
    activations = ActivationStore(settings.training_cache_mb * 2**20)
    rng = np.random.default_rng()

    p2p = await P2P.create(
        initial_peers=settings.initial_peers,
        host_maddrs=[f"/ip4/{settings.host}/tcp/{settings.port}"],
        identity_path=settings.identity_path,
        persistent_conn_max_msg_size=MAX_MESSAGE_BYTES,
    )
    node = await DHTNode.create(p2p=p2p, initial_peers=settings.initial_peers, client_mode=False)
    me = p2p.peer_id.to_base58()
    state = {"value": ServerState.JOINING}
    host: SpanHost | None = None
    control = ServerControl(settings.control_dir) if settings.control_dir else None
    if control is not None:
        control.read()

    def make_backend(span, budget: CacheBudget) -> SpanBackend:
        adapters = AdapterSet(span)
        for path in settings.adapters:
            logger.info("loaded adapter %s", adapters.load(path))
        return SpanBackend(span, budget, max_length, settings.max_request_tokens, adapters, activations)

    def make_record(span: tuple[int, int], new_state: ServerState) -> ServerRecord:
        backend = host.switch if host is not None else None
        scale = control.throttle.throughput_scale if control is not None else 1.0  # a throttled server looks slower
        return ServerRecord(
            peer_id=me,
            start=span[0],
            end=span[1],
            state=new_state,
            throughput=throughput * scale,
            inference_rps=measured.inference_rps * scale,
            free_cache_tokens=backend.free_cache_tokens if backend is not None else 0,
            max_request_tokens=settings.max_request_tokens,
            dtype=str(dtype).removeprefix("torch."),
            adapters=tuple(backend.adapters.names) if backend is not None else (),
        )

    async def announce_forever() -> None:
        while True:
            await host.announce()
            await asyncio.sleep(settings.announce_period)

    announcer: asyncio.Task | None = None
    try:
        await NetworkProbe().add_p2p_handlers(p2p)
        measured = await server_throughput(
            mode,
            source,
            dtype,
            settings.device,
            p2p,
            lambda: placement.peers_in_swarm(node, prefix, total, me, rng),
        )
        throughput = announced_throughput(mode, measured, length)
        if settings.blocks is None:
            delay = 0.0 if settings.new_swarm else settings.max_join_delay
            start = await placement.join_start(node, prefix, total, length, throughput, me, delay, rng)
            end = start + length
        host = SpanHost(
            source,
            dtype,
            settings.device,
            (start, end),
            settings.cache_tokens,
            make_backend,
            make_record,
            lambda: state["value"],
            node,
            prefix,
            settings.record_ttl,
        )
        announcer = asyncio.create_task(announce_forever())  # joining: others count this span while it loads
        backend = await host.load()
    except BaseException:
        if announcer is not None:
            announcer.cancel()
        await node.shutdown()
        await p2p.shutdown()
        raise
    state["value"] = ServerState.ONLINE
    await host.announce()
    executor = PriorityExecutor(after_job=control.after_job if control is not None else None)

    def record() -> ServerRecord:
        return make_record((host.start, host.end), state["value"])

    def describe() -> dict:
        return {**record().to_dict(), "model": prefix, "max_session_length": max_length}

    servicer = BlockServicer(backend, executor, describe, settings.step_timeout, settings.simulated_delay)
    await servicer.add_p2p_handlers(p2p)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def announce_now() -> None:
        await host.announce()

    rebalancer = None
    if settings.blocks is None and settings.rebalance_period > 0 and length < total:

        async def move(new_start: int) -> None:
            await host.move_to(new_start, lambda leaving: placement.can_leave(node, prefix, total, me, leaving))

        rebalancer = asyncio.create_task(
            placement.rebalance_forever(
                node, prefix, total, host.span_info, move, settings.rebalance_period, settings.balance_quality, rng
            )
        )
    controller = None
    if control is not None:

        def status() -> dict:
            return {**record().to_dict(), "sessions_open": servicer.active_sessions}

        controller = asyncio.create_task(control.run(status, announce_now))
    maddrs = [str(addr) for addr in await p2p.get_visible_maddrs()]
    info = {"peer_id": me, "blocks": [host.start, host.end], "maddrs": maddrs, "dht_prefix": prefix}
    logger.info("serving blocks %d:%d of %s as %s", host.start, host.end, prefix, me)
    if on_ready is not None:
        on_ready(info)
    try:
        await stop.wait()
    finally:
        announcer.cancel()
        if rebalancer is not None:
            rebalancer.cancel()
        if controller is not None:
            controller.cancel()
        await _leave(servicer, settings, lambda new_state: state.update(value=new_state), announce_now)
        if controller is not None:
            control.write_status(status())  # the last steps count too
        await servicer.remove_p2p_handlers(p2p)
        executor.shutdown()
        await node.shutdown()
        await p2p.shutdown()


async def _leave(
    servicer: BlockServicer,
    settings: ServerSettings,
    set_state: Callable[[ServerState], None],
    announce_now: Callable[[], Awaitable[None]],
) -> None:
    """Leave without dropping work: refuse new work, say so in the DHT, finish the steps in flight, say goodbye.

    Clients see ``draining`` and stop routing here; a client whose session was here gets an "unavailable" answer
    to its next step and replays its session elsewhere. ``offline`` makes clients forget this server at once.
    """
    logger.info("leaving: %d sessions open, %d steps in flight", servicer.active_sessions, servicer.steps_in_flight)
    servicer.accepting = False
    set_state(ServerState.DRAINING)
    await _announce_or_warn(announce_now, "draining")
    if not await servicer.drain(settings.drain_timeout):
        logger.warning(
            "%d steps still run after %.0f s; leaving anyway", servicer.steps_in_flight, settings.drain_timeout
        )
    await asyncio.sleep(0.2)  # the last answers are written after their handlers return: let them go out
    set_state(ServerState.OFFLINE)
    await _announce_or_warn(announce_now, "offline")


async def _announce_or_warn(announce_now: Callable[[], Awaitable[None]], what: str) -> None:
    try:
        await asyncio.wait_for(announce_now(), 5)
    except Exception as error:  # leaving must not hang on an unreachable DHT
        logger.warning("could not announce %s: %s", what, error)


def settings_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(ServerSettings))
