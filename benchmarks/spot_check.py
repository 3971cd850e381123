"""What spot-checks cost: generation tokens/s and a training step's time with checks on 0%, 5% and 20% of requests.

Starts the embedded model's swarm on 127.0.0.1: two servers for blocks 0:15 and two for 15:30, all honest, so every
hop has a verifier and no check ever finds a liar (the cost measured is the price of checking, not of catching).
One client per fraction (``ClientSettings.spot_check_fraction``; 0 turns checks off, new servers included), each
with its own connection. Rounds alternate the clients so that load on the machine hits them alike.

Per fraction it prints: the first generation (every server is new to the client, so every hop is checked), then the
median decode tokens/s over the later rounds, the median forward+backward time of a training batch, the ratio of
each to the 0% client, and the client's check counters.

    python benchmarks/spot_check.py [--rounds 5] [--new-tokens 32] [--batch 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm  # noqa: E402
from engine.client.config import ClientSettings  # noqa: E402
from engine.client.generation import chat_prompt  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."
SPANS = [(0, 15), (0, 15), (15, 30), (15, 30)]
FRACTIONS = [0.0, 0.05, 0.2]


def decode_rate(model: DistributedCausalLM, input_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    """Greedy decoding; returns tokens/s over the steps after the prompt's, and the tokens."""
    tokens, began = [], 0.0
    with torch.inference_mode(), model.inference_session(max_length=len(input_ids) + new_tokens) as session:
        step_input = torch.tensor([input_ids])
        for index in range(new_tokens):
            if index == 1:
                began = time.perf_counter()
            hidden = session.step(model.embed(step_input))
            step_input = model.logits(hidden[:, -1]).argmax(dim=-1, keepdim=True)
            tokens.append(int(step_input))
    return (new_tokens - 1) / (time.perf_counter() - began), tokens


def training_step(model: DistributedCausalLM, input_ids: torch.Tensor) -> float:
    """Seconds of one forward and backward of a batch through the swarm (gradients of the input embeddings)."""
    began = time.perf_counter()
    hidden = model.embed(input_ids).detach().requires_grad_(True)
    model.logits(model.blocks(hidden)).logsumexp(-1).mean().backward()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="training batch rows")
    parser.add_argument("--tokens", type=int, default=64, help="training tokens per row")
    args = parser.parse_args()

    source = resolve_model(DEFAULT_MODEL)  # convert once before the servers start
    input_ids = chat_prompt(source.tokenizer(), PROMPT)
    batch = torch.randint(
        0, source.config.vocab_size, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0)
    )
    print(f"starting a local swarm of {DEFAULT_MODEL}: servers for blocks {SPANS}", file=sys.stderr, flush=True)
    with LocalSwarm(DEFAULT_MODEL, SPANS) as swarm:
        models = {
            fraction: DistributedCausalLM.connect(
                DEFAULT_MODEL, swarm.initial_peers, settings=ClientSettings(spot_check_fraction=fraction)
            )
            for fraction in FRACTIONS
        }
        try:
            rates: dict[float, list[float]] = {fraction: [] for fraction in FRACTIONS}
            steps: dict[float, list[float]] = {fraction: [] for fraction in FRACTIONS}
            first: dict[float, float] = {}
            reference = None
            for round_index in range(args.rounds + 1):
                for fraction, model in models.items():
                    rate, tokens = decode_rate(model, input_ids, args.new_tokens)
                    seconds = training_step(model, batch)
                    reference = reference or tokens
                    if tokens != reference:
                        print(f"{fraction:.0%}: DIFFERENT tokens than the others", flush=True)
                    if round_index == 0:
                        first[fraction] = rate
                    else:
                        rates[fraction].append(rate)
                        steps[fraction].append(seconds)
                    print(f"round {round_index} {fraction:4.0%}: {rate:6.2f} tokens/s, training step {seconds:.3f} s",
                          flush=True)  # fmt: skip
            base_rate, base_step = statistics.median(rates[0.0]), statistics.median(steps[0.0])
            print(f"\n{DEFAULT_MODEL}, {args.new_tokens} new tokens, training batch {args.batch}x{args.tokens}, "
                  f"{args.rounds} rounds (median) after a first round:")  # fmt: skip
            for fraction, model in models.items():
                rate, step = statistics.median(rates[fraction]), statistics.median(steps[fraction])
                stats = model.swarm.router.spot.stats
                print(
                    f"spot-checks {fraction:4.0%}: first generation {first[fraction]:6.2f} tokens/s; then "
                    f"{rate:6.2f} tokens/s ({rate / base_rate:.2f}x of 0%), training step {step:.3f} s "
                    f"({step / base_step:.2f}x); checks {stats.checks}, unverified {stats.unverified}, "
                    f"mismatches {stats.mismatches}"
                )
        finally:
            for model in models.values():
                model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
