"""Throughput: cache keying and modes, the combined value, compute measurement, and a network probe over loopback."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hivemind.p2p import P2P

from engine.models.span import load_span
from engine.server import throughput as tp
from engine.server.throughput import Throughput, ThroughputCache, cache_key, combine, parse_throughput
from engine.weights import resolve_model


@pytest.fixture
def config(tiny_checkpoints: Callable[[str], Path]):
    return resolve_model(tiny_checkpoints("llama")).config


def test_cache_key_separates_hardware_model_dtype_and_quantization(config) -> None:
    key = cache_key("GPU A", config, torch.float16)
    assert cache_key("GPU A", config, torch.float16) == key
    assert cache_key("GPU B", config, torch.float16) != key
    assert cache_key("GPU A", config, torch.bfloat16) != key
    assert cache_key("GPU A", config, torch.float16, "nf4") != key
    wider = copy.deepcopy(config)
    wider.hidden_size = 128
    assert cache_key("GPU A", wider, torch.float16) != key
    assert torch.__version__ in key


def test_cache_key_ignores_where_the_model_lives(config) -> None:
    moved = copy.deepcopy(config)
    moved._name_or_path = "/somewhere/else"
    moved.transformers_version = "0.0.1"
    assert cache_key("cpu", moved, torch.float32) == cache_key("cpu", config, torch.float32)


def test_cpu_hardware_name_includes_threads() -> None:
    threads = torch.get_num_threads()
    assert tp.hardware_name("cpu").endswith(f"x{threads} threads")


def test_cache_round_trip_and_bad_files(tmp_path: Path) -> None:
    cache = ThroughputCache(tmp_path / "sub" / "throughput.json")
    assert cache.get("k") is None  # no file yet
    cache.put("k", Throughput(10.0, 500.0, None))
    cache.put("other", Throughput(1.0, 2.0, 3.0))
    assert cache.get("k") == Throughput(10.0, 500.0, None)
    assert cache.get("other") == Throughput(1.0, 2.0, 3.0)
    data = json.loads(cache.path.read_text())
    data["k"]["forward_tps"] = -1  # an edited entry that makes no sense is ignored
    cache.path.write_text(json.dumps(data))
    assert cache.get("k") is None
    cache.path.write_text("{not json")
    assert cache.get("other") is None


class Calls:
    def __init__(self, network: float | None = 50.0):
        self.compute = self.network = 0
        self.network_value = network

    async def measure_compute(self) -> tuple[float, float]:
        self.compute += 1
        return 10.0, 1000.0

    async def measure_network(self) -> float | None:
        self.network += 1
        return self.network_value


def resolve(mode, cache: ThroughputCache, calls: Calls) -> Throughput:
    return asyncio.run(tp.resolve_throughput(mode, cache, "key", calls.measure_compute, calls.measure_network))


def test_auto_measures_once_then_reuses_the_cache(tmp_path: Path) -> None:
    cache = ThroughputCache(tmp_path / "t.json")
    calls = Calls()
    assert resolve("auto", cache, calls) == Throughput(10.0, 1000.0, 50.0)
    assert resolve("auto", cache, calls) == Throughput(10.0, 1000.0, 50.0)
    assert (calls.compute, calls.network) == (1, 1)


def test_auto_measures_the_missing_network_part_when_a_peer_appears(tmp_path: Path) -> None:
    cache = ThroughputCache(tmp_path / "t.json")
    alone = Calls(network=None)  # first server of a swarm: nobody to measure against
    assert resolve("auto", cache, alone) == Throughput(10.0, 1000.0, None)
    later = Calls(network=70.0)
    assert resolve("auto", cache, later) == Throughput(10.0, 1000.0, 70.0)
    assert (later.compute, later.network) == (0, 1)
    assert cache.get("key") == Throughput(10.0, 1000.0, 70.0)


def test_eval_always_measures_and_a_number_never_does(tmp_path: Path) -> None:
    cache = ThroughputCache(tmp_path / "t.json")
    cache.put("key", Throughput(1.0, 1.0, 1.0))
    calls = Calls()
    assert resolve("eval", cache, calls) == Throughput(10.0, 1000.0, 50.0)
    assert cache.get("key") == Throughput(10.0, 1000.0, 50.0)
    assert resolve(123.0, cache, calls) == Throughput(123.0, 123.0, None)
    assert (calls.compute, calls.network) == (1, 1)


def test_parse_throughput() -> None:
    assert parse_throughput("auto") == "auto"
    assert parse_throughput("eval") == "eval"
    assert parse_throughput("12.5") == 12.5
    for bad in ("fast", "0", "-3", "nan", "inf"):
        with pytest.raises(ValueError, match="--throughput must be auto, eval or a positive number"):
            parse_throughput(bad)


def test_a_given_number_is_announced_as_is() -> None:
    measured = Throughput(10.0, 1000.0, 40.0)
    assert tp.announced_throughput(25.0, measured, 10) == 25.0
    assert tp.announced_throughput("auto", measured, 10) == combine(measured, 10) == 40.0


def test_combine_divides_compute_over_the_span_and_caps_by_network() -> None:
    assert combine(Throughput(10.0, 1000.0, None), 10) == 100.0
    assert combine(Throughput(10.0, 1000.0, 40.0), 10) == 40.0
    assert combine(Throughput(10.0, 1000.0, 400.0), 1) == 400.0
    with pytest.raises(ValueError):
        combine(Throughput(10.0, 1000.0, None), 0)


def test_measure_compute_on_a_real_block(tiny_checkpoints: Callable[[str], Path]) -> None:
    source = resolve_model(tiny_checkpoints("llama"))
    span = load_span(source, 2, 4, torch.float32)
    inference_rps, forward_tps = tp.measure_compute(span, seconds=0.05, forward_tokens=32)
    assert inference_rps > 0 and forward_tps > 0


def test_network_probe_over_loopback() -> None:
    async def main() -> tuple[float | None, float | None]:
        server = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        client = await P2P.create(initial_peers=[str(addr) for addr in await server.get_visible_maddrs()])
        try:
            await tp.NetworkProbe().add_p2p_handlers(server)
            measured = await tp.measure_network(client, [server.peer_id.to_base58()], 64, torch.float32, 2**16)
            # a peer without the probe (here: a peer id nobody has) gives no measurement rather than an error
            stranger = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
            missing = await tp.measure_network(client, [stranger], 64, torch.float32, 2**10)
            return measured, missing
        finally:
            await client.shutdown()
            await server.shutdown()

    measured, missing = asyncio.run(main())
    assert measured is not None and measured > 0
    assert missing is None
