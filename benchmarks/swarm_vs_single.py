"""Embedded model three ways in one run: one process (transformers), our swarm of 2 servers, and of 3.

Prints tokens/s of a 64-token greedy generation, time to first token, and forward throughput (tokens/s) at
batch 1 and 8 of 128 tokens, each with its ratio to the single process. Ratios are what to compare: this
machine is noisy, but all rows are measured in the same run.

    python benchmarks/swarm_vs_single.py [--repeats 3] [--new-tokens 64] [--threads 1]
        [--server-args "--link-latency 0.05 --no-batching"]
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
from engine.client.generation import GenerationSettings, chat_prompt, generate  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

PROMPT = "Write a short story about a robot who learns to paint."


class _Timestamps:
    """A transformers streamer that only records when each token arrives."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def measure_single(source, input_ids: list[int], new_tokens: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    ids = torch.tensor([input_ids])
    model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up, as the swarm gets one
    speeds, firsts = [], []
    for _ in range(repeats):
        stamps = _Timestamps()
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=stamps)
        times = stamps.times[1:]  # the first put() is the prompt itself
        firsts.append(times[0] - began)
        speeds.append((len(times) - 1) / (times[-1] - times[0]))

    def forward(batch: torch.Tensor) -> None:
        with torch.inference_mode():
            model(batch)

    return {"gen": statistics.median(speeds), "ttft": statistics.median(firsts), **_forward_rates(forward, repeats)}


def measure_swarm(
    source, input_ids: list[int], new_tokens: int, repeats: int, servers: int, server_args: list[str]
) -> dict:
    spans = even_spans(source.config.num_hidden_layers, servers)
    with LocalSwarm(DEFAULT_MODEL, spans, server_args) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            settings = GenerationSettings(max_new_tokens=new_tokens, draft_tokens=0)  # as transformers decodes
            generate(model, input_ids, GenerationSettings(max_new_tokens=4), stop_token_ids=set())  # warm-up
            results = [generate(model, input_ids, settings, stop_token_ids=set()) for _ in range(repeats)]

            def forward(batch: torch.Tensor) -> None:
                with torch.no_grad():
                    model(batch)

            return {
                "gen": statistics.median(result.tokens_per_second for result in results),
                "ttft": statistics.median(result.time_to_first_token for result in results),
                **_forward_rates(forward, repeats),
                "route": " -> ".join(results[-1].route),
            }
        finally:
            model.close()


def _forward_rates(forward, repeats: int) -> dict:
    rates = {}
    for batch_size in (1, 8):
        batch = torch.randint(0, 1000, (batch_size, 128))
        forward(batch)  # warm-up
        seconds = []
        for _ in range(max(repeats, 5)):  # a forward is short: more samples steady the median
            began = time.perf_counter()
            forward(batch)
            seconds.append(time.perf_counter() - began)
        rates[f"fwd{batch_size}"] = batch_size * 128 / statistics.median(seconds)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the single process, the client and every server (0: each its default, all cores); "
        "1 keeps the processes of one machine from competing for cores inside each operation",
    )
    parser.add_argument("--server-args", default="", help="extra arguments of every server, space-separated")
    args = parser.parse_args()
    server_args = args.server_args.split()
    if args.threads:
        torch.set_num_threads(args.threads)
        server_args += ["--num-threads", str(args.threads)]
    source = resolve_model(DEFAULT_MODEL)
    input_ids = chat_prompt(source.tokenizer(), PROMPT)
    print(
        f"model {DEFAULT_MODEL}, prompt {len(input_ids)} tokens, {args.new_tokens} new tokens, "
        f"median of {args.repeats}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    rows = {"single process": measure_single(source, input_ids, args.new_tokens, args.repeats)}
    for servers in (2, 3):
        rows[f"swarm, {servers} servers"] = measure_swarm(
            source, input_ids, args.new_tokens, args.repeats, servers, server_args
        )
    base = rows["single process"]
    print(
        f"\n{'setup':<18} {'gen tok/s':>10} {'ratio':>6} {'TTFT s':>7} "
        f"{'fwd b1 tok/s':>13} {'ratio':>6} {'fwd b8 tok/s':>13} {'ratio':>6}"
    )
    for name, row in rows.items():
        print(
            f"{name:<18} {row['gen']:>10.1f} {row['gen'] / base['gen']:>6.0%} {row['ttft']:>7.3f} "
            f"{row['fwd1']:>13.0f} {row['fwd1'] / base['fwd1']:>6.0%} "
            f"{row['fwd8']:>13.0f} {row['fwd8'] / base['fwd8']:>6.0%}"
        )
    for name, row in rows.items():
        if "route" in row:
            print(f"route of {name}: {row['route']}")


if __name__ == "__main__":
    main()
