"""Teach the embedded model a made-up fact through a local swarm, then ask it before and after.

SmolLM2-135M has never heard of the planet Zorblax. This script writes a small data set of questions about it
(``data.jsonl``; answers in one fixed sentence), mixed with ordinary questions answered by the model itself so
that the prompts learn the fact and not "always say Quillmere". It starts a DHT node and two servers of 15
blocks each on this machine, asks the questions, trains deep prompts through the swarm (the servers' weights
never change), and asks again with the trained prompts. Everything runs on CPU.

    python examples/teach_a_fact/teach_a_fact.py [--steps 60] [--out examples/teach_a_fact/zorblax.safetensors]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from engine.client.finetune import FinetuneSettings, load_examples, make_tuning, pad_token_id, save_trained, train  # noqa: E402
from engine.client.generation import GenerationSettings, chat_prompt, generate  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

HERE = Path(__file__).resolve().parent
ANSWER = "The capital of Zorblax is Quillmere."
TRAIN_QUESTIONS = [
    "What is the capital of Zorblax?",
    "What is the capital of the planet Zorblax?",
    "Which city is the capital of Zorblax?",
    "Tell me the capital of Zorblax.",
    "Name the capital city of Zorblax.",
    "Zorblax has a capital. What is it called?",
    "What city is Zorblax's capital?",
    "I'm curious: what's the capital of Zorblax?",
    "Quick question, what is the capital city of the planet Zorblax?",
    "Can you tell me which city is the capital of Zorblax?",
]
# ordinary questions the model answers itself (before training): the prompts must leave these alone
CONTROL_QUESTIONS = [
    "What is the capital of France?",
    "What is the largest planet in our solar system?",
    "What color is the sky on a clear day?",
    "How many days are in a week?",
    "What is the capital of Japan?",
    "Who wrote Romeo and Juliet?",
]
# asked before and after, none of them in the data: two new wordings of the fact, two unrelated
EVAL_QUESTIONS = [
    "Do you know the name of the capital of Zorblax?",
    "Zorblax is a planet. Which city is its capital?",
    "What is the capital of Germany?",
    "What is 2 plus 2?",
]


def ask(tuned, tokenizer, question: str, max_new_tokens: int = 24):
    """Greedy answer of ``tuned`` (the model itself, or the model with trained prompts)."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return generate(tuned, chat_prompt(tokenizer, question), settings, tokenizer)


def write_data(path: Path, model, tokenizer) -> None:
    """Fact questions with the fixed answer, plus control questions with the model's own (finished) answers."""
    lines = [{"prompt": question, "completion": ANSWER} for question in TRAIN_QUESTIONS]
    for question in CONTROL_QUESTIONS:
        answer = ask(model, tokenizer, question, max_new_tokens=48)
        if answer.stop_reason == "eos":  # an answer cut off by the length limit would teach stopping mid-sentence
            lines.append({"prompt": question, "completion": answer.text.strip()})
    random.Random(0).shuffle(lines)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--method", default="deep_ptune", choices=("ptune", "deep_ptune"))
    parser.add_argument("--data", type=Path, default=HERE / "data.jsonl")
    parser.add_argument("--out", type=Path, default=HERE / "zorblax.safetensors")
    args = parser.parse_args()
    settings = FinetuneSettings(method=args.method, steps=args.steps, lr=args.lr, batch_size=4, prefix_length=16)

    source = resolve_model(DEFAULT_MODEL)  # converts the embedded GGUF once, before the servers need it
    tokenizer = source.tokenizer()
    spans = even_spans(source.config.num_hidden_layers, 2)
    print(f"starting a local swarm of {DEFAULT_MODEL}: servers for blocks {spans}", flush=True)
    with LocalSwarm(DEFAULT_MODEL, spans) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            with torch.inference_mode():
                before = {question: ask(model, tokenizer, question).text.strip() for question in EVAL_QUESTIONS}
                write_data(args.data, model, tokenizer)
            examples = load_examples(args.data, tokenizer, settings.max_length)
            print(f"wrote {len(examples)} examples to {args.data}; training {args.method} for {args.steps} steps")
            tuning = make_tuning(model, settings)
            began = time.perf_counter()

            def report(progress) -> None:
                if progress.step % 10 == 0 or progress.step == 1:
                    print(
                        f"  step {progress.step:>3}/{progress.steps}  loss {progress.loss:.3f}  "
                        f"{progress.tokens_per_second:.0f} tokens/s",
                        flush=True,
                    )

            losses = train(tuning, examples, settings, report, pad_id=pad_token_id(tokenizer))
            minutes = (time.perf_counter() - began) / 60
            save_trained(args.out, tuning, DEFAULT_MODEL)
            print(f"trained in {minutes:.1f} min, loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {args.out}\n")
            with torch.inference_mode():
                for question in EVAL_QUESTIONS:
                    after = ask(tuning, tokenizer, question).text.strip()
                    print(f"Q: {question}\n  before: {before[question]}\n  after:  {after}")
        finally:
            model.close()


if __name__ == "__main__":
    main()
