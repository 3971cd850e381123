"""Training throughput of prompt tuning through a 2-server local swarm against the same step in one process.

Model: the embedded SmolLM2-135M (30 blocks, float32, CPU). A step is a forward, a backward and an AdamW update
of the trainable prompts on a batch of 4 x 64 tokens (the setup in which Petals' prompt tuning reached 41% of a
single process). Tokens/s counts the 256 input tokens of a step.

Two swarms, each measured against two single-process baselines:
- swarm: servers keep each forward's graph for its backward (the default, ``--training-cache-mb``);
- swarm, recompute: servers recompute the forward inside the backward (``--training-cache-mb 0``), as Petals does;
- one process, same code: the very same ``PromptTuning`` module, its blocks run in this process (the engine's
  ``BlockSpan`` over all 30 blocks, the layers the servers run);
- one process, transformers: transformers' own model, the prefix in front of ``inputs_embeds``.
Steps of a swarm and of both baselines alternate, so all see the same machine load; each ratio is the swarm's
tokens/s over a baseline's measured beside it.

    python benchmarks/finetune_throughput.py [--steps 6] [--method ptune|deep_ptune]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from engine.client.finetune import METHODS  # noqa: E402
from engine.client.local import LocalCausalLM  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.client.ptune import causal_lm_loss  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

BATCH, TOKENS, PREFIX = 4, 64, 16


class TransformersStep:
    """The same prompt-tuning step written against transformers' own model."""

    def __init__(self, source, method: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
        self.model.requires_grad_(False)
        hidden, blocks = self.model.config.hidden_size, self.model.config.num_hidden_layers
        self.prefix = torch.nn.Parameter(torch.randn(PREFIX, hidden) * 0.02)
        parameters = [self.prefix]
        self.deep = None
        if method == "deep_ptune":
            self.deep = torch.nn.Parameter(torch.zeros(blocks, PREFIX, hidden))
            parameters.append(self.deep)
            for index, layer in enumerate(self.model.model.layers):
                layer.register_forward_pre_hook(self._add_deep(index), with_kwargs=True)
        self.optimizer = torch.optim.AdamW(parameters, lr=1e-3)

    def _add_deep(self, index: int):
        def add(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = torch.cat([hidden[:, :PREFIX] + self.deep[index], hidden[:, PREFIX:]], dim=1)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        return add

    def __call__(self, input_ids: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        embeds = self.model.model.embed_tokens(input_ids)
        inputs = torch.cat([self.prefix.expand(input_ids.shape[0], -1, -1), embeds], dim=1)
        hidden = self.model.model(inputs_embeds=inputs, use_cache=False).last_hidden_state[:, PREFIX:]
        loss = causal_lm_loss(self.model.lm_head(hidden), input_ids)  # the head on the input tokens only, as ours
        loss.backward()
        self.optimizer.step()
        return loss.item()


class TuningStep:
    """One ``nectar finetune`` training step, through the swarm or (with ``LocalCausalLM``) in this process."""

    def __init__(self, model: DistributedCausalLM, method: str):
        self.tuning = METHODS[method](model, PREFIX)
        self.optimizer = torch.optim.AdamW(self.tuning.trainable_parameters(), lr=1e-3)

    def __call__(self, input_ids: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.tuning.loss(input_ids, input_ids)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def timed(step: Callable[[torch.Tensor], float], input_ids: torch.Tensor) -> float:
    began = time.perf_counter()
    step(input_ids)
    return time.perf_counter() - began


def measure(steps: dict[str, Callable[[torch.Tensor], float]], count: int, seed: int) -> dict[str, float]:
    """Median seconds per step of each, taken in turns after one warm-up step each."""
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, 49152, (BATCH, TOKENS), generator=generator) for _ in range(count + 1)]
    times: dict[str, list[float]] = {name: [] for name in steps}
    for index, input_ids in enumerate(batches):
        for name, step in steps.items():
            seconds = timed(step, input_ids)
            if index > 0:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def run_swarm(source, baseline: TransformersStep, args: argparse.Namespace, server_args: list[str]) -> dict:
    spans = even_spans(source.config.num_hidden_layers, 2)
    with LocalSwarm(DEFAULT_MODEL, spans, server_args=server_args) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            steps = {
                "swarm": TuningStep(model, args.method),
                "same code": TuningStep(LocalCausalLM(source), args.method),
                "transformers": baseline,
            }
            seconds = measure(steps, args.steps, args.seed)
            route = " -> ".join(f"{hop.start}:{hop.end}@{hop.peer_id[-6:]}" for hop in model.blocks.last_route)
        finally:
            model.close()
    return {**seconds, "route": route}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--method", choices=sorted(METHODS), default="ptune")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = resolve_model(DEFAULT_MODEL)
    torch.manual_seed(args.seed)
    baseline = TransformersStep(source, args.method)
    tokens = BATCH * TOKENS
    print(
        f"model {DEFAULT_MODEL}, {args.method} (prefix {PREFIX}), batch {BATCH} x {TOKENS} tokens, "
        f"median of {args.steps} steps, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    rows = {
        "swarm, 2 servers": run_swarm(source, baseline, args, []),
        "swarm, 2 servers, recompute": run_swarm(source, baseline, args, ["--training-cache-mb", "0"]),
    }
    print(
        f"\n{'setup':<28} {'s/step':>6} {'tokens/s':>8} | {'one process, same code':>22} {'ratio':>6} | "
        f"{'one process, transformers':>25} {'ratio':>6}"
    )
    for name, row in rows.items():
        print(
            f"{name:<28} {row['swarm']:>6.2f} {tokens / row['swarm']:>8.1f} | "
            f"{tokens / row['same code']:>18.1f} t/s {row['same code'] / row['swarm']:>6.0%} | "
            f"{tokens / row['transformers']:>21.1f} t/s {row['transformers'] / row['swarm']:>6.0%}"
        )
    for name, row in rows.items():
        print(f"route of {name}: {row['route']}")


if __name__ == "__main__":
    main()
