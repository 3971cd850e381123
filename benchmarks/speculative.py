"""Speculative decoding through a 2-server swarm of the embedded model, at 0, 25 and 100 ms per hop, in one run.

The task is input-grounded (rewrite a given paragraph), where n-gram lookup in the prompt proposes well. For each
emulated latency (each server adds it to every answer: ``--simulated-delay``) it prints greedy tokens/s and tokens per
trip along the chain, plain and speculative, and the ceiling of one token per trip (1 / (hops x latency)) that plain
decoding cannot pass whatever the compute. The texts are compared too: speculative greedy must equal plain greedy.

    python benchmarks/speculative.py [--latencies 0 25 100] [--new-tokens 96] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from engine.client.generation import GenerationSettings, chat_prompt, generate  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

TEXT = (
    "The swarm serves a large language model from many small machines. Each server holds a span of blocks, "
    "and a client sends its hidden states from one server to the next. When a server leaves, the client picks "
    "another server for the same blocks and replays what it sent before, so the generation goes on."
)
PROMPT = f"Repeat the following paragraph, word for word, then add one sentence of your own.\n\n{TEXT}"
HOPS = 2


def measure(input_ids: list[int], latency_ms: float, new_tokens: int, repeats: int) -> dict[str, dict]:
    spans = even_spans(resolve_model(DEFAULT_MODEL).config.num_hidden_layers, HOPS)
    server_args = ["--simulated-delay", str(latency_ms / 1000)]
    with LocalSwarm(DEFAULT_MODEL, spans, server_args=server_args) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            generate(model, input_ids, GenerationSettings(max_new_tokens=4, draft_tokens=0))  # warm-up
            rows = {}
            for name, draft_tokens in (("plain", 0), ("speculative", 4), ("speculative, 8", 8)):
                settings = GenerationSettings(max_new_tokens=new_tokens, draft_tokens=draft_tokens)
                results = [generate(model, input_ids, settings, stop_token_ids=set()) for _ in range(repeats)]
                rows[name] = {
                    "tok/s": statistics.median(len(r.tokens) / r.seconds for r in results),
                    "tokens/trip": statistics.median(r.tokens_per_step for r in results),
                    "kept": sum(r.accepted for r in results) / max(1, sum(r.drafted for r in results)),
                    "tokens": results[-1].tokens,
                }
            return rows
        finally:
            model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0, 25, 100], help="ms added per hop")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    input_ids = chat_prompt(resolve_model(DEFAULT_MODEL).tokenizer(), PROMPT)
    print(
        f"model {DEFAULT_MODEL}, {HOPS} servers, prompt {len(input_ids)} tokens, {args.new_tokens} new tokens "
        f"(greedy, whole call incl. prefill), median of {args.repeats}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    print(f"\n{'ms/hop':>6} {'decoding':<15} {'tok/s':>7} {'x plain':>8} {'tok/trip':>9} {'kept':>6} {'ceiling':>8}")
    for latency in args.latencies:
        rows = measure(input_ids, latency, args.new_tokens, args.repeats)
        ceiling = f"{1000 / (HOPS * latency):.1f}" if latency else "-"
        for name, row in rows.items():
            same = "" if row["tokens"] == rows["plain"]["tokens"] else "  TEXT DIFFERS FROM PLAIN"
            print(
                f"{latency:>6g} {name:<15} {row['tok/s']:>7.1f} {row['tok/s'] / rows['plain']['tok/s']:>8.2f} "
                f"{row['tokens/trip']:>9.2f} {row['kept']:>6.0%} {ceiling:>8}{same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
