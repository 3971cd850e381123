"""``nectar bench``: what this machine has and how fast it serves the configured model, cached with its time.

- Accelerators (NVML, else ``torch.cuda``) and CPU model, cores and RAM (``agent/hardware.py``).
- Compute: the engine's own measurement (``engine.server.throughput.measure_compute``) on one block of the
  configured model, in the configured dtype and device: one-token inference steps/s and bulk forward tokens/s.
- Network: the engine's echo probe (``NetworkProbe``, ``measure_network``) against servers of the configured swarm:
  hidden states/s there and back, turned into Mbit/s, and the round trip of an empty echo.

The running agent measures in a child process (``nectar bench --measure-only``), so loading a model never
weighs on the agent process; the result is cached in ``benchmark.json`` and shown with its age.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import Callable

from agent.api.endpoints import ControlError
from agent.api.models import BenchmarkAnswer, ComputeMeasure, NetworkMeasure
from agent.executable import child_command
from agent.hardware import accelerators, cpu_info, resolve_device
from agent.paths import AgentPaths, write_private
from agent.settings import Settings

logger = logging.getLogger(__name__)

MEASURE_TIMEOUT = 900.0


def measure_machine(
    settings: Settings, initial_peers: list[str] | None = None, swarm_key: str | None = None
) -> BenchmarkAnswer:
    """Measure now (loads one block of the model: seconds to a minute); ``swarm_key``: a private swarm's key file."""
    answer = BenchmarkAnswer(measured_at=time.time(), age_s=0.0, accelerators=accelerators(), cpu=cpu_info())
    answer.compute = _measure_compute(settings)
    peers = initial_peers if initial_peers is not None else settings.swarm.initial_peers
    if peers:
        answer.network = _measure_network(settings, peers, swarm_key)
    else:
        answer.network = NetworkMeasure(detail="no swarm peers to measure")
    return answer


def _measure_compute(settings: Settings) -> ComputeMeasure:
    from engine.models.span import load_span
    from engine.server.server import resolve_dtype
    from engine.server.throughput import measure_compute
    from engine.weights import resolve_model

    device = resolve_device(settings.compute.device)
    dtype = resolve_dtype(settings.compute.dtype, device)
    source = resolve_model(settings.swarm.model)
    span = load_span(source, 0, 1, dtype, device)
    inference_rps, forward_tps = measure_compute(span)
    return ComputeMeasure(
        model=settings.swarm.model,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        tokens_per_second=inference_rps,
        forward_tokens_per_second=forward_tps,
    )


def _measure_network(settings: Settings, initial_peers: list[str], swarm_key: str | None) -> NetworkMeasure:
    try:
        measure = asyncio.run(_network(settings, initial_peers, swarm_key))
    except Exception as error:  # an unreachable swarm is a result, not a failure of the benchmark
        return NetworkMeasure(detail=f"could not reach the swarm: {error}")
    if settings.swarm.name == "local":
        return measure
    reachability, why = asyncio.run(_reachability(settings, initial_peers, swarm_key))
    detail = "; ".join(text for text in (measure.detail, why) if text)
    return measure.model_copy(update={"reachability": reachability, "detail": detail})


async def _reachability(settings: Settings, initial_peers: list[str], swarm_key: str | None) -> tuple[str, str]:
    """How peers would reach a server of this machine (direct, relay, unreachable), by the check a server runs."""
    from engine.identity import EphemeralIdentity
    from engine.server.network import UnreachableError, join_network
    from engine.server.settings import ServerSettings
    from engine.swarm_key import load_swarm_key

    swarm = settings.swarm
    probe = ServerSettings(
        model=swarm.model,
        initial_peers=initial_peers,
        host=swarm.listen_host(),
        port=swarm.port,
        announce_host=swarm.announce_host or None,
        announce_port=swarm.announce_port or None,
        reachability="check",
    )
    identity = EphemeralIdentity()
    try:
        key = load_swarm_key(swarm_key) if swarm_key else None
        joined = await join_network(probe, identity.path, key)
    except UnreachableError as error:
        return "unreachable", str(error)
    except Exception as error:  # e.g. the agent's own server holds the port
        return "", f"could not check reachability: {error}"
    finally:
        identity.remove()
    await joined.p2p.shutdown()
    return joined.reachability.value, ""


async def _network(settings: Settings, initial_peers: list[str], swarm_key: str | None) -> NetworkMeasure:
    import numpy as np
    import torch
    from hivemind.p2p import PeerID
    from hivemind.proto import runtime_pb2

    from engine.peer import join_swarm
    from engine.records import default_dht_prefix
    from engine.server import placement
    from engine.server.server import resolve_dtype
    from engine.server.throughput import NetworkProbe, measure_network
    from engine.swarm_key import load_swarm_key
    from engine.weights import resolve_model

    config = resolve_model(settings.swarm.model).config
    prefix = settings.swarm.dht_prefix or default_dht_prefix(settings.swarm.model)
    dtype = resolve_dtype(settings.compute.dtype, resolve_device(settings.compute.device))
    key = load_swarm_key(swarm_key) if swarm_key else None
    p2p, node, _ = await join_swarm(initial_peers, client_mode=True, swarm_key=key)
    try:
        me = p2p.peer_id.to_base58()
        peers = await placement.peers_in_swarm(node, prefix, config.num_hidden_layers, me, np.random.default_rng())
        if not peers:
            return NetworkMeasure(detail="no server of the model in the swarm")
        tokens_per_s = await measure_network(p2p, peers, config.hidden_size, dtype)
        stub = NetworkProbe.get_stub(p2p, PeerID.from_base58(peers[0]))
        began = time.perf_counter()
        await stub.rpc_echo(runtime_pb2.ExpertRequest(), timeout=10)
        rtt_ms = 1e3 * (time.perf_counter() - began)
        bytes_per_token = config.hidden_size * torch.empty((), dtype=dtype).element_size()
        mbps = None if tokens_per_s is None else 2 * tokens_per_s * bytes_per_token * 8 / 1e6  # there and back
        return NetworkMeasure(bandwidth_mbps=mbps, rtt_ms=rtt_ms, peers=len(peers))
    finally:
        await node.shutdown()
        await p2p.shutdown()


class BenchmarkCache:
    """The agent's benchmark: the cached result with its age, and a fresh measurement in a child process."""

    def __init__(self, paths: AgentPaths, settings: Callable[[], Settings], peers: Callable[[], list[str]] = list):
        self.paths, self.settings, self.peers = paths, settings, peers

    def cached(self) -> BenchmarkAnswer:
        return load_cached(self.paths)

    def is_fresh(self) -> bool:
        answer = self.cached()
        max_age = self.settings().compute.benchmark_max_age_days * 86400
        return answer.age_s is not None and answer.age_s <= max_age

    def measure(self) -> BenchmarkAnswer:
        settings = self.settings().model_dump_json()
        command = [*child_command(), "bench", "--measure-only", "--json", "--settings-json", settings]
        peers = self.peers()
        if peers:
            command += ["--initial-peers", *peers]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=MEASURE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ControlError("the benchmark did not finish in time", status_code=500) from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ControlError(f"the benchmark failed: {last}", status_code=500)
        answer = BenchmarkAnswer.model_validate_json(done.stdout)
        save(self.paths, answer)
        return answer


def save(paths: AgentPaths, answer: BenchmarkAnswer) -> None:
    write_private(paths.benchmark_file, answer.model_dump_json(exclude={"age_s"}))


def load_cached(paths: AgentPaths) -> BenchmarkAnswer:
    try:
        answer = BenchmarkAnswer.model_validate_json(paths.benchmark_file.read_text())
    except (OSError, ValueError):
        return BenchmarkAnswer(detail="never measured (run `nectar bench`)")
    if answer.measured_at is not None:
        answer.age_s = max(0.0, time.time() - answer.measured_at)
    return answer


def format_benchmark(answer: BenchmarkAnswer) -> str:
    if answer.measured_at is None:
        return answer.detail or "never measured"
    lines = [f"measured {_age(answer.age_s or 0.0)} ago"]
    if answer.cpu:
        cpu = answer.cpu
        lines.append(f"cpu: {cpu.model}, {cpu.cores} cores / {cpu.threads} threads, {cpu.ram_gb} GiB RAM")
    for accelerator in answer.accelerators:
        lines.append(
            f"gpu: {accelerator.name}, {accelerator.memory_gb} GiB, driver {accelerator.driver} ({accelerator.source})"
        )
    if not answer.accelerators:
        lines.append("gpu: none found")
    if answer.compute:
        compute = answer.compute
        lines.append(
            f"compute: {compute.model} on {compute.device} in {compute.dtype}: "
            f"{compute.tokens_per_second:.1f} inference steps/s and {compute.forward_tokens_per_second:.0f} "
            "forward tokens/s per block"
        )
    if answer.network:
        network = answer.network
        if network.bandwidth_mbps is not None:
            lines.append(f"network: {network.bandwidth_mbps:.0f} Mbit/s, round trip {network.rtt_ms:.1f} ms")
        else:
            lines.append(f"network: {network.detail or 'not measured'}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def print_json(answer: BenchmarkAnswer) -> None:
    print(json.dumps(answer.model_dump(mode="json"), indent=1))
