"""Checks that need a GPU, in one run: every RPC on cuda, a generation, a fine-tuning step and memory sizing.

Run it on a machine with CUDA (it says so and stops where there is none):

    python benchmarks/gpu_check.py [--model smollm2-135m] [--dtype auto] [--new-tokens 32]

It prints what it saw: the device-RPC tests (``tests/test_device_rpcs.py``, cuda case), a greedy generation through
a two-server swarm on the GPU compared token by token with the model running in one CPU process in float32 (the
reference), a prompt-tuning step through that swarm (loss before and after, gradient norm), and the memory
sizing: the span length ``span_size`` chooses for this GPU against the GPU memory the servers really hold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from engine.client.generation import GenerationSettings, chat_prompt, generate  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.client.ptune import PromptTuning  # noqa: E402
from engine.server.precision import dtype_name, resolve_device, resolve_dtype  # noqa: E402
from engine.server.span_size import GIB, block_cost, choose_num_blocks, memory_budget_bytes  # noqa: E402
from engine.weights import resolve_model  # noqa: E402

PROMPT = "Write three sentences about the sea."


def run_device_tests(device: torch.device) -> None:
    case = "cuda" if device.type == "cuda" else "cpu0"
    print(f"== device RPC tests (tests/test_device_rpcs.py, {case}) ==", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_device_rpcs.py", "-k", case],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    print("\n".join(done.stdout.strip().splitlines()[-8:]))
    print(f"exit code {done.returncode}", flush=True)


def reference_tokens(source, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy tokens for the model in one CPU process, in float32, without stopping at EOS."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    prompt = torch.tensor([ids])
    with torch.no_grad():
        mask = torch.ones_like(prompt)
        output = model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens)
    return output[0, len(ids) :].tolist()


def gpu_memory_of(pids: list[int]) -> dict[int, float]:
    """GiB of GPU memory each process holds, from nvidia-smi (empty where it is missing)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    used = {}
    for line in out.strip().splitlines():
        pid, mib = (part.strip() for part in line.split(","))
        if int(pid) in pids:
            used[int(pid)] = int(mib) / 1024
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda", help="cpu:0 runs the same checks without a GPU (a dry run)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run this on a GPU machine, or --device cpu:0 for a dry run)")
        return 1
    device = resolve_device(args.device)
    source = resolve_model(args.model)
    config = source.config
    dtype = resolve_dtype(args.dtype, device, config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (dry run)"
    print(f"GPU: {name}; model {args.model}; --dtype {args.dtype} -> {dtype_name(dtype)}")
    run_device_tests(device)

    print("== memory sizing ==")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
    else:
        free = total = memory_budget_bytes(str(device), None)
    budget = memory_budget_bytes(str(device), None)
    for movable in (False, True):
        cost = block_cost(config, dtype, 16384, 8192, 1024 * 2**20, movable)
        blocks = choose_num_blocks(config, dtype, str(device), None, 16384, 8192, 1024 * 2**20, movable)
        print(
            f"free {free / GIB:.1f} of {total / GIB:.1f} GiB, budget {budget / GIB:.1f} GiB; movable={movable}: "
            f"{blocks} of {config.num_hidden_layers} blocks (per block {cost.per_block / 2**20:.0f} MiB, "
            f"fixed {cost.fixed_bytes / 2**20:.0f} MiB)"
        )

    print(f"== generation and a fine-tuning step through a 2-server swarm on {device} ==", flush=True)
    spans = even_spans(config.num_hidden_layers, 2)
    server_args = ["--device", args.device, "--dtype", args.dtype, "--cache-tokens", "4096"]
    with LocalSwarm(args.model, spans, server_args) as swarm:
        ready = [child.ready for child in swarm.servers]
        print("servers:", [(info["blocks"], info["device"], info["dtype"]) for info in ready])
        model = DistributedCausalLM.connect(args.model, swarm.initial_peers)
        try:
            tokenizer = source.tokenizer()
            ids = chat_prompt(tokenizer, PROMPT)
            settings = GenerationSettings(max_new_tokens=args.new_tokens)
            began = time.perf_counter()
            result = generate(model, ids, settings, tokenizer, stop_token_ids=set())
            seconds = time.perf_counter() - began
            expected = reference_tokens(source, ids, args.new_tokens)
            same = next(
                (i for i, (a, b) in enumerate(zip(result.tokens, expected, strict=False)) if a != b),
                len(result.tokens),
            )
            print(f"swarm text: {result.text!r}")
            speed = f"{len(result.tokens)} tokens in {seconds:.2f} s ({result.tokens_per_second:.1f} tokens/s)"
            print(f"{speed}; the first {same} equal the CPU float32 reference")
            tuning = PromptTuning(model, prefix_length=8)
            batch = torch.tensor([ids[:32]])
            loss = tuning.loss(batch, batch)
            loss.backward()
            grad_norm = tuning.prefix.grad.norm().item()
            torch.optim.SGD(tuning.trainable_parameters(), lr=1e-2).step()
            with torch.no_grad():
                after = tuning.loss(batch, batch).item()
            print(f"fine-tuning step: loss {loss.item():.4f} -> {after:.4f}, prefix gradient norm {grad_norm:.3e}")
        finally:
            model.close()
        held = gpu_memory_of([child.process.pid for child in swarm.servers])
        print("GPU memory held by the servers (GiB):", {pid: round(gib, 2) for pid, gib in held.items()} or "unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
