"""What a server announces as its speed: measured compute and network, combined, and cached across restarts.

- Compute: one block of the model, loaded in the dtype the server will serve, timed on one-token inference steps
  (``inference_rps``) and on a bulk forward pass (``forward_tps``, tokens/s through one block).
- Network: a payload of hidden states echoed by another server over the swarm's own P2P transport
  (``NetworkProbe.rpc_echo``), so it measures the links the swarm really uses, not an internet speed test. The
  echo carries the payload both ways, as a forward request does (hidden states in, hidden states out). A server
  that finds no peer (the first of a swarm) announces compute alone; its network part stays unmeasured (None) in
  the cache, and a later start with ``--throughput auto`` measures just that part once a peer exists.
- Announced throughput (``combine``): a token entering a span runs through all of its blocks, so the span passes
  ``forward_tps / num_blocks`` tokens/s, which is what it adds to each block it holds; the network caps it.
- ``--throughput NUMBER`` is announced as given (tokens/s the server adds to each of its blocks), unmeasured.
- Cache: one JSON file, keyed by hardware (CPU model and torch threads, or GPU name), torch version, model
  config hash, dtype and quantization. ``--throughput auto`` uses it, ``eval`` re-measures, a number skips both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
from hivemind.compression import serialize_torch_tensor
from hivemind.p2p import P2P, P2PContext, PeerID, ServicerBase
from hivemind.proto import runtime_pb2
from transformers import PretrainedConfig

from engine.models.span import BlockSpan, load_span
from engine.weights import ModelSource

logger = logging.getLogger(__name__)

MODES = ("auto", "eval")
PROBE_PAYLOAD_BYTES = 2**20  # one echo carries 1 MiB each way: seconds on a slow uplink, milliseconds on a LAN
PROBE_TRIALS = 3
PROBE_TIMEOUT_S = 30.0
PROBE_PEERS = 3  # peers tried in turn before giving up on measuring the network


@dataclass(frozen=True)
class Throughput:
    """Measured speeds of one block on this hardware; ``network_tps`` is None where no peer could be reached."""

    inference_rps: float  # one-token inference steps per second through one block
    forward_tps: float  # tokens per second of a bulk forward pass through one block
    network_tps: float | None = None  # hidden states per second a peer link carries to this server and back

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: object) -> Throughput | None:
        """A cached entry, or None for one that is malformed (the cache is a file anyone may edit)."""
        if not isinstance(raw, dict):
            return None
        try:
            inference, forward, network = raw["inference_rps"], raw["forward_tps"], raw.get("network_tps")
        except KeyError:
            return None
        if not all(_positive(value) for value in (inference, forward)) or not (network is None or _positive(network)):
            return None
        return cls(float(inference), float(forward), None if network is None else float(network))


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def combine(measured: Throughput, num_blocks: int) -> float:
    """Tokens/s the server adds to each block of a span of ``num_blocks``: its compute over the span, network-capped."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    compute = measured.forward_tps / num_blocks
    return compute if measured.network_tps is None else min(compute, measured.network_tps)


def announced_throughput(mode: str | float, measured: Throughput, num_blocks: int) -> float:
    """What the server announces: a number given with ``--throughput`` as is, else the combined measurement."""
    return float(mode) if isinstance(mode, float | int) else combine(measured, num_blocks)


def parse_throughput(text: str) -> str | float:
    """``auto``, ``eval`` or a positive number of tokens/s per block; anything else is a one-line ValueError."""
    if text in MODES:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--throughput must be auto, eval or a positive number of tokens/s, got {text!r}")
    return value


# ---- cache ------------------------------------------------------------------------------------------------------


def default_cache_path() -> Path:
    """The cache file; ``NECTAR_CACHE_DIR`` moves it along with the converted models (tests, shared lab disks)."""
    override = os.environ.get("NECTAR_CACHE_DIR")
    root = Path(override) if override else Path(platformdirs.user_cache_dir("nectar"))
    return root / "throughput.json"


def hardware_name(device: str) -> str:
    """What the compute speed depends on: the GPU's name, or the CPU's model and the torch threads it may use."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{_cpu_model()} x{torch.get_num_threads()} threads"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:  # Linux: the marketing name, e.g. "AMD EPYC 7B13"
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def config_hash(config: PretrainedConfig) -> str:
    """A digest of the architecture; paths and library versions stored in the config do not change it."""
    fields = {key: value for key, value in config.to_dict().items() if not key.startswith("_")}
    fields.pop("transformers_version", None)
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(hardware: str, config: PretrainedConfig, dtype: torch.dtype, quantization: str = "none") -> str:
    dtype_name = str(dtype).removeprefix("torch.")
    return f"{hardware} | torch {torch.__version__} | model {config_hash(config)} | {dtype_name} | {quantization}"


class ThroughputCache:
    """A JSON file of ``key -> Throughput``; written atomically, so concurrent starts never read half a file.

    Two servers writing at once may each drop the other's new entry (the later rename wins); the loser simply
    measures again on its next start.
    """

    def __init__(self, path: Path | None = None):
        self.path = path or default_cache_path()

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Throughput | None:
        return Throughput.from_dict(self._load().get(key))

    def put(self, key: str, value: Throughput) -> None:
        data = self._load()
        data[key] = value.to_dict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".throughput-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1, sort_keys=True)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


async def resolve_throughput(
    mode: str | float,
    cache: ThroughputCache,
    key: str,
    measure_compute: Callable[[], Awaitable[tuple[float, float]]],
    measure_network: Callable[[], Awaitable[float | None]],
) -> Throughput:
    """The server's speeds under ``--throughput``: a number as given, ``eval`` measured, ``auto`` cached if it can.

    With ``auto``, only the parts missing from the cache are measured (the network one when a peer first exists).
    A number is announced as given and also stands for inference steps/s, since nothing is measured.
    """
    if isinstance(mode, float | int):
        return Throughput(float(mode), float(mode), None)
    cached = cache.get(key) if mode == "auto" else None
    if cached is not None and cached.network_tps is not None:
        return cached
    if cached is None:
        inference_rps, forward_tps = await measure_compute()
    else:
        inference_rps, forward_tps = cached.inference_rps, cached.forward_tps
    result = Throughput(inference_rps, forward_tps, await measure_network())
    if result != cached:
        try:
            cache.put(key, result)
        except OSError as error:  # a read-only home must not stop a server from serving
            logger.warning("could not write the throughput cache %s: %s", cache.path, error)
    return result


# ---- compute ----------------------------------------------------------------------------------------------------


def measure_compute(span: BlockSpan, seconds: float = 0.5, forward_tokens: int = 256) -> tuple[float, float]:
    """(one-token inference steps/s, forward tokens/s) through the first block of ``span``, in its dtype and device.

    Each part runs for about ``seconds`` after a warm-up call (allocator and kernel selection), at most 64 steps.
    """
    first = span.start
    steps = 64
    cache = span.new_cache(first, first + 1, 1, steps + 1)
    hidden = torch.randn(1, 1, span.config.hidden_size, dtype=span.dtype, device=span.device)
    batch = torch.randn(1, forward_tokens, span.config.hidden_size, dtype=span.dtype, device=span.device)
    with torch.inference_mode():
        span(hidden, 0, cache, first, first + 1)  # warm-up
        done, elapsed = _timed(lambda step: span(hidden, step + 1, cache, first, first + 1), steps, seconds, span)
        inference_rps = done / elapsed
        span(batch, 0, None, first, first + 1)  # warm-up
        done, elapsed = _timed(lambda _: span(batch, 0, None, first, first + 1), 16, seconds, span)
        forward_tps = done * forward_tokens / elapsed
    return inference_rps, forward_tps


def _timed(call: Callable[[int], object], limit: int, seconds: float, span: BlockSpan) -> tuple[int, float]:
    """Run ``call(i)`` until ``seconds`` pass or ``limit`` calls are done; returns (calls, elapsed seconds)."""
    began = time.perf_counter()
    done = 0
    while done < limit:
        call(done)
        done += 1
        if span.device.type == "cuda":
            torch.cuda.synchronize(span.device)
        if time.perf_counter() - began >= seconds:
            break
    return done, max(time.perf_counter() - began, 1e-9)


# ---- network ----------------------------------------------------------------------------------------------------


class NetworkProbe(ServicerBase):
    """Echoes a request's tensors back, so that a joining server can time the swarm's links. Every server has it."""

    async def rpc_echo(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        return runtime_pb2.ExpertResponse(tensors=request.tensors)


async def measure_network(
    p2p: P2P, peers: Sequence[str], hidden_size: int, dtype: torch.dtype, payload_bytes: int = PROBE_PAYLOAD_BYTES
) -> float | None:
    """Hidden states/s that the link to a peer carries there and back, or None if no peer answered.

    Time of an echo of ``payload_bytes`` minus that of an empty echo (the round-trip latency), median of a few
    trials; the first peer in ``peers`` that answers is used.
    """
    bytes_per_token = hidden_size * torch.empty((), dtype=dtype).element_size()
    tokens = max(1, payload_bytes // bytes_per_token)
    payload = runtime_pb2.ExpertRequest(tensors=[serialize_torch_tensor(torch.zeros(tokens, hidden_size, dtype=dtype))])
    empty = runtime_pb2.ExpertRequest()
    for peer in list(peers)[:PROBE_PEERS]:
        stub = NetworkProbe.get_stub(p2p, PeerID.from_base58(peer))
        try:
            await stub.rpc_echo(empty, timeout=PROBE_TIMEOUT_S)  # opens the connection; not timed
            latency = statistics.median([await _echo_time(stub, empty) for _ in range(PROBE_TRIALS)])
            full = statistics.median([await _echo_time(stub, payload) for _ in range(PROBE_TRIALS)])
        except Exception as error:  # an unreachable or old peer: try the next one
            logger.info("could not measure the network to %s: %s", peer[-8:], error)
            continue
        transfer = max(full - latency, 1e-6)  # on loopback the difference can vanish in timer noise
        logger.info(
            "network to %s: %.0f hidden states/s (round trip %.1f ms)", peer[-8:], tokens / transfer, 1e3 * latency
        )
        return tokens / transfer
    return None


async def _echo_time(stub, request: runtime_pb2.ExpertRequest) -> float:
    began = time.perf_counter()
    await stub.rpc_echo(request, timeout=PROBE_TIMEOUT_S)
    return time.perf_counter() - began


async def server_throughput(
    mode: str | float,
    source: ModelSource,
    dtype: torch.dtype,
    device: str,
    p2p: P2P,
    peers: Callable[[], Awaitable[Sequence[str]]],
    cache: ThroughputCache | None = None,
    quantization: str = "none",
) -> Throughput:
    """A starting server's speeds under ``--throughput``; compute is measured on block 0 loaded just for that,
    quantized as the server's blocks will be (quantized matmuls run at their own speed)."""
    key = cache_key(hardware_name(device), source.config, dtype, quantization)

    async def compute() -> tuple[float, float]:
        logger.info("measuring compute throughput (cached for later starts)")
        span = await asyncio.to_thread(load_span, source, 0, 1, dtype, device, quantization)
        return await asyncio.to_thread(measure_compute, span)

    async def network() -> float | None:
        found = await peers()
        if not found:
            logger.info("no other server yet: announcing compute throughput alone (network measured on a later start)")
            return None
        return await measure_network(p2p, found, source.config.hidden_size, dtype)

    measured = await resolve_throughput(mode, cache or ThroughputCache(), key, compute, network)
    logger.info(
        "throughput per block: %.1f inference steps/s, %.0f forward tokens/s, network %s",
        measured.inference_rps,
        measured.forward_tps,
        "unmeasured" if measured.network_tps is None else f"{measured.network_tps:.0f} tokens/s",
    )
    return measured
