"""A server process: load a span, join the DHT, announce it, serve RPCs, and leave cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P

from engine import records
from engine.models.span import BlockSpan, load_span
from engine.records import ServerRecord, ServerState, default_dht_prefix
from engine.server.backend import SpanBackend
from engine.server.executor import PriorityExecutor
from engine.server.handler import BlockServicer
from engine.server.memory import CacheBudget
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
    blocks: str | None = field(default=None, metadata={"help": "span to serve as START:END (default: all)"})
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


def measure_speed(span: BlockSpan) -> tuple[float, float]:
    """Quick one-off speed of the span: (one-token inference steps/s per block, forward tokens/s per block)."""
    blocks = span.end - span.start
    cache = span.new_cache(span.start, span.end, 1, 8)
    hidden = torch.zeros(1, 1, span.config.hidden_size, dtype=span.dtype, device=span.device)
    batch = torch.zeros(1, 128, span.config.hidden_size, dtype=span.dtype, device=span.device)
    with torch.inference_mode():
        span(hidden, 0, cache)  # warm-up
        began = time.perf_counter()
        for position in range(1, 5):
            span(hidden, position, cache)
        step = (time.perf_counter() - began) / 4
        began = time.perf_counter()
        span(batch)
        forward = time.perf_counter() - began
    return blocks / max(step, 1e-9), 128 * blocks / max(forward, 1e-9)


async def run_server(settings: ServerSettings, on_ready: Callable[[dict], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then announce leaving, let running steps finish, and exit."""
    if not settings.new_swarm and not settings.initial_peers:
        raise ValueError("give --initial-peers ADDR to join a swarm, or --new-swarm to start one")
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    source = resolve_model(settings.model)
    config = source.config
    start, end = parse_blocks(settings.blocks, config.num_hidden_layers)
    dtype = resolve_dtype(settings.dtype, settings.device)
    prefix = settings.dht_prefix or default_dht_prefix(settings.model)
    span = await asyncio.to_thread(load_span, source, start, end, dtype, settings.device)
    max_length = min(settings.max_session_length, span.family.max_context(config))
    per_token = span.new_cache(start, end, 1, 1).bytes_per_token(end - start, span.family.kv_shape(config), dtype)
    backend = SpanBackend(span, CacheBudget(settings.cache_tokens * per_token), max_length, settings.max_request_tokens)
    inference_rps, throughput = await asyncio.to_thread(measure_speed, span)

    p2p = await P2P.create(
        initial_peers=settings.initial_peers,
        host_maddrs=[f"/ip4/{settings.host}/tcp/{settings.port}"],
        identity_path=settings.identity_path,
        persistent_conn_max_msg_size=MAX_MESSAGE_BYTES,
    )
    node = await DHTNode.create(p2p=p2p, initial_peers=settings.initial_peers, client_mode=False)
    executor = PriorityExecutor()
    state = {"value": ServerState.ONLINE}

    def record() -> ServerRecord:
        return ServerRecord(
            peer_id=p2p.peer_id.to_base58(),
            start=start,
            end=end,
            state=state["value"],
            throughput=throughput,
            inference_rps=inference_rps,
            free_cache_tokens=backend.free_cache_tokens,
            max_request_tokens=settings.max_request_tokens,
            dtype=str(dtype).removeprefix("torch."),
        )

    def describe() -> dict:
        return {**record().to_dict(), "model": prefix, "max_session_length": max_length}

    servicer = BlockServicer(backend, executor, describe, settings.step_timeout)
    await servicer.add_p2p_handlers(p2p)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def announce_forever() -> None:
        while True:
            await records.announce(node, prefix, record(), settings.record_ttl)
            await asyncio.sleep(settings.announce_period)

    announcer = asyncio.create_task(announce_forever())
    maddrs = [str(addr) for addr in await p2p.get_visible_maddrs()]
    info = {"peer_id": p2p.peer_id.to_base58(), "blocks": [start, end], "maddrs": maddrs, "dht_prefix": prefix}
    logger.info("serving blocks %d:%d of %s as %s", start, end, prefix, info["peer_id"])
    if on_ready is not None:
        on_ready(info)
    try:
        await stop.wait()
    finally:
        logger.info("leaving: announcing and finishing %d running sessions", servicer.active_sessions)
        servicer.accepting = False
        state["value"] = ServerState.OFFLINE
        announcer.cancel()
        try:
            await asyncio.wait_for(records.announce(node, prefix, record(), settings.record_ttl), 5)
        except Exception as error:  # leaving must not hang on an unreachable DHT
            logger.warning("could not announce leaving: %s", error)
        await servicer.remove_p2p_handlers(p2p)
        executor.shutdown()
        await node.shutdown()
        await p2p.shutdown()


def settings_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(ServerSettings))
