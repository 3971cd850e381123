"""Shared fixtures: tiny random checkpoints of each family, and real local swarms on 127.0.0.1.

Nothing here touches the network beyond loopback, and every swarm a test starts is stopped by its fixture
(SIGTERM, then SIGKILL), so a failing test leaves no server behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from agent.local_swarm import LocalSwarm

# one thread per process: tests run several server processes on a 2-core machine
TEST_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_nectar(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the ``nectar`` command line in a real child process, as a user would, and capture what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **TEST_ENV},
        stdin=subprocess.DEVNULL,
    )


TINY_CONFIGS = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", use_sliding_window=False),
    "qwen3": dict(model_type="qwen3", head_dim=16),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    # multi-query attention, parallel attention and MLP, rotary positions (Falcon-7B's layout)
    "falcon": dict(model_type="falcon", multi_query=True, parallel_attn=True, alibi=False, bias=False),
    "bloom": dict(model_type="bloom"),  # ALiBi positions, fused qkv with biases, embedding LayerNorm
    # global and 4-token sliding layers with their own rotary tables, scaled embeddings, soft-capped logits
    "gemma3_text": dict(
        model_type="gemma3_text",
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
    ),
}


def make_tiny_checkpoint(path: Path, family: str, num_layers: int = 4, seed: int = 0) -> Path:
    """A randomly initialized model of ``family`` saved as safetensors (no tokenizer), small enough for CPU tests."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TINY_CONFIGS[family])
    model_type = spec.pop("model_type")
    shape = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    if "layer_types" in spec:
        spec["layer_types"] = (spec["layer_types"] * num_layers)[:num_layers]
    config = AutoConfig.for_model(model_type, **{**shape, **spec})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_checkpoints("llama")`` -> directory of a tiny random checkpoint of that family (made once)."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_tiny_checkpoint(root / family, family)
        return made[family]

    return get


@pytest.fixture
def local_swarm() -> Iterator[Callable[..., LocalSwarm]]:
    """``local_swarm(model, spans, server_args=...)`` -> a started LocalSwarm, stopped after the test."""
    started: list[LocalSwarm] = []

    def start(model: str, spans, server_args=(), env=None) -> LocalSwarm:
        swarm = LocalSwarm(str(model), spans, server_args=server_args, env={**TEST_ENV, **(env or {})})
        started.append(swarm.start())
        return swarm

    yield start
    for swarm in started:
        swarm.stop()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The tests of the model code that leans on transformers, torch, peft and gguf: CI also runs them (`-m model`) on the
# newest versions pyproject.toml allows and on its lowest bounds (see .ci/run).
MODEL_TEST_FILES = {
    "test_span.py",
    "test_swarm_generation.py",
    "test_partial_loading.py",
    "test_gguf_cache.py",
    "test_finetune.py",
    "test_finetune_swarm.py",
    "test_quantization.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in MODEL_TEST_FILES:
            item.add_marker(pytest.mark.model)
