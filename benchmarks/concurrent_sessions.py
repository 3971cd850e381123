"""Aggregate generation speed of 1, 2, 4 and 8 sessions at once through a local swarm of 2 servers (embedded model).

Each session is a greedy generation of its own prompt, from its own thread of one client; the aggregate is every
session's new tokens over the wall time of the round (prefill included). With continuous batching the servers run
the waiting one-token steps of all sessions as one forward, so more sessions should give more tokens per second;
``--no-batching`` runs the same with every step computed alone, for comparison. ``--link-latency`` adds a
simulated wide-area link to every server (``engine/server/link.py``). Ratios to one session are what to compare:
this machine is noisy, but all rows come from the same run.

    python benchmarks/concurrent_sessions.py [--new-tokens 32] [--sessions 1 2 4 8] [--no-batching]
        [--link-latency 0.05] [--server-threads N]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from engine import wire  # noqa: E402
from engine.client.generation import GenerationSettings, chat_prompt, generate  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

TOPICS = ["the sea", "a robot", "bread", "the moon", "a library", "rain", "trains", "a garden"]


def run_round(
    model: DistributedCausalLM, prompts: list[list[int]], new_tokens: int, draft_tokens: int = 0
) -> tuple[float, int]:
    """(seconds, new tokens) of generating from every prompt at once, one thread per session."""
    settings = GenerationSettings(max_new_tokens=new_tokens, draft_tokens=draft_tokens)
    counts = [0] * len(prompts)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts) + 1)

    def one(index: int) -> None:
        barrier.wait()
        try:
            counts[index] = len(generate(model, prompts[index], settings, stop_token_ids=set()).tokens)
        except BaseException as error:  # reported after the round
            errors.append(error)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise errors[0]
    return seconds, sum(counts)


def batch_counts(model: DistributedCausalLM, peers: list[str]) -> list[tuple[int, int]]:
    """(batched forwards so far, most sessions in one) of each server, from its ``info``."""
    counts = []
    for peer in peers:
        answer = model.swarm.run(wire.call(model.swarm.p2p, peer, wire.INFO_PROTOCOL, wire.request(), 30), 60)
        info = wire.unpack_response(answer, peer)[1]
        counts.append((info.get("step_batches", 0), info.get("largest_step_batch", 0)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--no-batching", action="store_true", help="servers compute every step alone")
    parser.add_argument(
        "--draft-tokens",
        type=int,
        default=0,
        help="speculative decoding per session (default 0: one-token steps, the ones servers batch)",
    )
    parser.add_argument("--link-latency", type=float, default=0.0, help="one-way seconds of every server's link")
    parser.add_argument(
        "--server-threads", type=int, default=0, help="torch threads of each server and of the client (0: default)"
    )
    args = parser.parse_args()
    source = resolve_model(DEFAULT_MODEL)
    tokenizer = source.tokenizer()
    prompts = [chat_prompt(tokenizer, f"Write a short poem about {topic}.") for topic in TOPICS]
    server_args = ["--no-batching"] if args.no_batching else []
    if args.link_latency:
        server_args += ["--link-latency", str(args.link_latency)]
    if args.server_threads:
        server_args += ["--num-threads", str(args.server_threads)]
        torch.set_num_threads(args.server_threads)
    spans = even_spans(source.config.num_hidden_layers, args.servers)
    print(
        f"model {DEFAULT_MODEL}, {args.servers} servers {spans}, {args.new_tokens} new tokens per session, "
        f"batching {'off' if args.no_batching else 'on'}, link latency {args.link_latency:g} s, "
        f"client torch threads {torch.get_num_threads()}",
        flush=True,
    )
    with LocalSwarm(DEFAULT_MODEL, spans, server_args) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            run_round(model, prompts[:2], 4)  # warm-up: connections, caches, first steps
            rows = []
            peers = [server.ready["peer_id"] for server in swarm.servers]
            for count in args.sessions:
                chosen = [prompts[index % len(prompts)] for index in range(count)]
                before = batch_counts(model, peers)
                seconds, tokens = run_round(model, chosen, args.new_tokens, args.draft_tokens)
                after = batch_counts(model, peers)
                batches = [done - old for (done, _), (old, _) in zip(after, before, strict=True)]
                rows.append((count, tokens / seconds, seconds))
                print(f"{count} sessions: {tokens / seconds:.1f} tokens/s ({tokens} tokens in {seconds:.2f} s); "
                      f"batched forwards per server {batches}, largest {[most for _, most in after]}",
                      flush=True)  # fmt: skip
        finally:
            model.close()
    base = rows[0][1]
    print(f"\n{'sessions':>8} {'tokens/s':>9} {'vs 1':>6}")
    for count, rate, _ in rows:
        print(f"{count:>8} {rate:>9.1f} {rate / base:>6.2f}x")


if __name__ == "__main__":
    main()
