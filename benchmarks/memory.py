"""Memory of servers after serving a session, against one process that holds the whole model.

For each process tree (the server's Python process and its p2p daemon) it prints the proportional set size
(PSS: shared pages split between the processes that share them, so nothing is counted twice) and the
resident set (RSS) of the Python process alone.

    python benchmarks/memory.py
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
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


def main() -> None:
    rss_whole, pss_whole = whole_model_process()
    print(f"{'process':<34} {'PSS MiB (all processes)':>24} {'RSS MiB (python)':>17}")
    print(f"{'whole model, one process':<34} {pss_whole:>24.0f} {rss_whole:>17.0f}")
    for split in (10, 15):
        pss, rss, count = measure_split(split)
        print(f"{f'server of {split} blocks ({count} processes)':<34} {pss:>24.0f} {rss:>17.0f}")


if __name__ == "__main__":
    main()
