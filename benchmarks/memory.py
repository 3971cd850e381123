"""Memory of servers after serving a session, against one process that holds the whole model; and of quantized servers.

For each process tree (the server's Python process and its p2p daemon) it prints the proportional set size
(PSS: shared pages split between the processes that share them, so nothing is counted twice) and the
resident set (RSS) of the Python process alone.

Quantized servers (``--quant``): for float32, int8 and nf4, a server of 15 blocks and one of 1 block, each after a
64-token generation, and the peak PSS of the 15-block server while it loads. The blocks' memory (weights and
caches) is the difference between the two servers scaled to 15 blocks; what remains of the 1-block server is the
fixed cost of a server process (Python, torch, transformers, hivemind and the p2p daemon), reported separately.

    python benchmarks/memory.py [--quantized-only]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm  # noqa: E402
from engine.client.generation import GenerationSettings, chat_prompt, generate  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

MIB = 2**20


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(PSS of the process and all its children in MiB, RSS of the process in MiB, number of processes)."""
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    pss = sum(process.memory_full_info().pss for process in processes)
    return pss / MIB, root.memory_info().rss / MIB, len(processes)


def whole_model_process() -> tuple[float, float]:
    """Peak RSS and PSS of a plain transformers process that holds the whole model and generates."""
    code = textwrap.dedent(
        f"""
        import psutil, torch
        from transformers import AutoModelForCausalLM
        from engine.weights import resolve_model
        source = resolve_model({DEFAULT_MODEL!r})
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
        model.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=16, do_sample=False)
        info = psutil.Process().memory_full_info()
        print(info.rss / 2**20, info.pss / 2**20)
        """
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rss, pss = map(float, output.split()[-2:])
    return rss, pss


def measure_split(split: int) -> tuple[float, float, int]:
    """Memory of the server of blocks 0:split after it served a 64-token generation."""
    source = resolve_model(DEFAULT_MODEL)
    with LocalSwarm(DEFAULT_MODEL, [(0, split), (split, source.config.num_hidden_layers)]) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        try:
            prompt = chat_prompt(source.tokenizer(), "Tell me about bees.")
            generate(model, prompt, GenerationSettings(max_new_tokens=64), stop_token_ids=set())
            return tree_memory(swarm.servers[0].process.pid)
        finally:
            model.close()


def peak_while_loading(child) -> float:
    """Highest PSS (MiB) of a starting server's process tree, sampled until it is ready."""
    peak = 0.0
    while not child.ready_event.is_set():
        with contextlib.suppress(psutil.Error):  # a child of the tree came or went between listing and reading
            peak = max(peak, tree_memory(child.process.pid)[0])
        time.sleep(0.1)
    return peak


def measure_quantized(blocks: int, quantization: str) -> tuple[float, float]:
    """(PSS after a 64-token generation, peak PSS while loading) in MiB of the server of blocks 0:blocks."""
    source = resolve_model(DEFAULT_MODEL)
    args = ["--quant", quantization, "--throughput", "1"]  # a given throughput: no measurement span is loaded
    swarm = LocalSwarm(DEFAULT_MODEL, [], server_args=args).start()  # the DHT node; servers follow
    model = None
    try:
        first = swarm.add_server((0, blocks), wait=False)
        peak = peak_while_loading(first)
        if first.ready is None:
            raise RuntimeError(f"the server did not start:\n{first.tail()}")
        swarm.add_server((blocks, source.config.num_hidden_layers))
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        prompt = chat_prompt(source.tokenizer(), "Tell me about bees.")
        generate(model, prompt, GenerationSettings(max_new_tokens=64), stop_token_ids=set())
        return tree_memory(first.process.pid)[0], peak
    finally:
        if model is not None:
            model.close()
        swarm.stop()


def quantized_table() -> None:
    header = f"{'PSS MiB':>8} {'peak loading':>13} {'blocks MiB':>11} {'x float32':>10} {'fixed':>6}"
    print(f"\n{'15-block server':<16} {header}")
    float_blocks = None
    for quantization in ("none", "int8", "nf4"):
        full, peak = measure_quantized(15, quantization)
        single, _ = measure_quantized(1, quantization)
        blocks = (full - single) * 15 / 14
        fixed = single - blocks / 15
        float_blocks = float_blocks or blocks
        name = "float32" if quantization == "none" else quantization
        print(f"{name:<16} {full:>8.0f} {peak:>13.0f} {blocks:>11.0f} {blocks / float_blocks:>10.2f} {fixed:>6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantized-only", action="store_true", help="only the float32 / int8 / nf4 servers")
    if parser.parse_args().quantized_only:
        quantized_table()
        return
    rss_whole, pss_whole = whole_model_process()
    print(f"{'process':<34} {'PSS MiB (all processes)':>24} {'RSS MiB (python)':>17}")
    print(f"{'whole model, one process':<34} {pss_whole:>24.0f} {rss_whole:>17.0f}")
    for split in (10, 15):
        pss, rss, count = measure_split(split)
        print(f"{f'server of {split} blocks ({count} processes)':<34} {pss:>24.0f} {rss:>17.0f}")
    quantized_table()


if __name__ == "__main__":
    main()
