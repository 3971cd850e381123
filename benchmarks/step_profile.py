"""Where one generation step's time goes, hop by hop, through a local swarm of 2 servers on the embedded model.

For every hop of a one-token step it prints, in milliseconds per token (median over the steps):
- client: from sending the step to having its checked answer (what generation waits for);
- server wait: from the server reading the message to its compute thread starting it (parsing, checks, the event
  loop and the hand-off to the compute thread, the queue);
- server compute: the span's forward on the compute thread;
- server reply: from the compute's end until the answer is handed to the stream (hand-off back, delay if any);
- outside the handler: client minus the three above (the client's framing and parsing, both P2P daemons, the
  loopback transport, and packing the answer);
then the same span's step computed in this process (no transport at all), a ping's round trip (the transport
alone), a whole step of an inference session with servers passing outputs along the chain and with the client
carrying every hop, and the cost of packing and unpacking one token's hidden states.

Servers report their part of the timing in each step's answer (``timing``); the client part is measured here.
The machine's other load counts in every number: compare rows of the same run.

    python benchmarks/step_profile.py [--steps 64] [--servers 2] [--server-args "--link-latency 0.05"]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from engine import wire  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.client.session import InferenceStream  # noqa: E402
from engine.models.span import load_span  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

PREFIX_TOKENS = 42


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):7.2f}"


async def _profile_chain(model: DistributedCausalLM, steps: int, hidden_size: int) -> list[dict[str, list[float]]]:
    swarm = model.swarm
    route = await swarm.router.inference_chain(0, model.num_blocks, PREFIX_TOKENS + steps + 1, set())
    streams = [await InferenceStream.open(swarm.p2p, hop, 1, PREFIX_TOKENS + steps + 1, 60.0) for hop in route]
    rows = [{"client": [], "wait": [], "compute": [], "reply": [], "ping": []} for _ in streams]
    try:
        hidden = torch.randn(1, PREFIX_TOKENS, hidden_size)
        for stream in streams:
            hidden = await stream.step(hidden, 0, 60.0)
        for step in range(steps):
            hidden = torch.randn(1, 1, hidden_size)
            for stream, row in zip(streams, rows, strict=True):
                began = time.perf_counter()
                await stream._send(stream._step_request(hidden, PREFIX_TOKENS + step))
                answer = await stream._receive(60.0)
                hidden = stream._output(answer, hidden)
                row["client"].append(time.perf_counter() - began)
                timing = answer[1].get("timing", {})
                for key in ("wait", "compute", "reply"):
                    row[key].append(float(timing.get(key, 0.0)))
        for stream, row in zip(streams, rows, strict=True):
            for _ in range(16):
                began = time.perf_counter()
                await wire.call(swarm.p2p, stream.hop.peer_id, wire.PING_PROTOCOL, wire.request(), 10.0)
                row["ping"].append(time.perf_counter() - began)
    finally:
        for stream in streams:
            await stream.close()
    for stream, row in zip(streams, rows, strict=True):
        row["blocks"] = (stream.hop.start, stream.hop.end)
    return rows


def _session_steps(model: DistributedCausalLM, steps: int, hidden_size: int) -> dict[str, float]:
    """Median seconds of a whole one-token step through the chain: servers passing outputs along, and not."""
    results = {}
    for label, no_push in (("servers pass outputs on", False), ("client carries every hop", True)):
        model.swarm.settings.no_push = no_push
        with model.inference_session(max_length=PREFIX_TOKENS + steps + 1) as session:
            session.step(torch.randn(1, PREFIX_TOKENS, hidden_size))
            seconds = []
            for _ in range(steps):
                began = time.perf_counter()
                session.step(torch.randn(1, 1, hidden_size))
                seconds.append(time.perf_counter() - began)
        results[label] = statistics.median(seconds)
    model.swarm.settings.no_push = False
    return results


def _local_step(source, start: int, end: int, steps: int) -> list[float]:
    """The same span's one-token steps computed in this process, with its own cache."""
    span = load_span(source, start, end, torch.float32)
    cache = span.new_cache(start, end, 1, PREFIX_TOKENS + steps + 1)
    seconds = []
    with torch.inference_mode():
        span(torch.randn(1, PREFIX_TOKENS, span.config.hidden_size), 0, cache)
        for step in range(steps):
            began = time.perf_counter()
            span(torch.randn(1, 1, span.config.hidden_size), PREFIX_TOKENS + step, cache)
            seconds.append(time.perf_counter() - began)
    return seconds


def _serialization(hidden_size: int, repeats: int = 200) -> tuple[float, float]:
    hidden = torch.randn(1, 1, hidden_size)
    began = time.perf_counter()
    for _ in range(repeats):
        data = wire.request([hidden], position=1).SerializeToString()
    pack = (time.perf_counter() - began) / repeats
    began = time.perf_counter()
    for _ in range(repeats):
        message = wire.runtime_pb2.ExpertRequest()
        message.ParseFromString(data)
        wire.unpack(message)
    return pack, (time.perf_counter() - began) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--server-args", default="", help="extra arguments of every server, space-separated")
    args = parser.parse_args()
    source = resolve_model(DEFAULT_MODEL)
    spans = even_spans(source.config.num_hidden_layers, args.servers)
    hidden_size = source.config.hidden_size
    print(f"model {DEFAULT_MODEL}, {args.servers} servers {spans}, {args.steps} one-token steps after a "
          f"{PREFIX_TOKENS}-token prefix, torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    with LocalSwarm(DEFAULT_MODEL, spans, args.server_args.split()) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            model.swarm.run(_profile_chain(model, 4, hidden_size))  # warm-up
            rows = model.swarm.run(_profile_chain(model, args.steps, hidden_size))
            chain = _session_steps(model, args.steps, hidden_size)
        finally:
            model.close()
    local = {row["blocks"]: _local_step(source, *row["blocks"], args.steps) for row in rows}
    whole = _local_step(source, 0, source.config.num_hidden_layers, args.steps)
    pack, unpack = _serialization(hidden_size)
    print(f"\nper hop, ms per token (median)  {'client':>7} {'wait':>7} {'compute':>7} {'reply':>7} "
          f"{'outside':>7} {'local':>7} {'ping':>7}")  # fmt: skip
    total = 0.0
    for row in rows:
        parts = zip(row["client"], row["wait"], row["compute"], row["reply"], strict=True)
        outside = [client - wait - compute - reply for client, wait, compute, reply in parts]
        total += statistics.median(row["client"])
        print(
            f"blocks {row['blocks'][0]:>2}:{row['blocks'][1]:<2}{'':17} {_ms(row['client'])} {_ms(row['wait'])} "
            f"{_ms(row['compute'])} {_ms(row['reply'])} {_ms(outside)} {_ms(local[row['blocks']])} {_ms(row['ping'])}"
        )
    print(f"\nchain, client ms per token: {1000 * total:.2f}; all blocks in this process: "
          f"{1000 * statistics.median(whole):.2f}")  # fmt: skip
    for label, seconds in chain.items():
        print(f"whole step through the chain, {label}: {1000 * seconds:.2f} ms")
    print(f"pack one token's hidden states: {1e6 * pack:.0f} us, unpack: {1e6 * unpack:.0f} us")


if __name__ == "__main__":
    main()
