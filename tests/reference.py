"""What transformers itself computes, for tests to compare spans and the swarm against.

Not a test module: helpers shared by the span, partial-loading and swarm tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import make_tiny_checkpoint
from safetensors.torch import load_file, save_file

FAMILY_SEEDS = {"llama": 0, "mistral": 1, "qwen2": 2, "qwen3": 3}


def make_lively_checkpoint(path: Path, family: str, num_layers: int = 4, scale: float = 10.0) -> Path:
    """A tiny checkpoint whose matrices are ``scale`` times larger than the default initialization.

    At the default scale (std 0.02) a random model's greedy output is one token repeated, which would let a
    broken cache or position pass unnoticed; larger weights give varied tokens with clear margins.
    """
    make_tiny_checkpoint(path, family, num_layers=num_layers, seed=FAMILY_SEEDS.get(family, 0))
    file = path / "model.safetensors"
    state = {name: tensor * scale if tensor.ndim == 2 else tensor for name, tensor in load_file(file).items()}
    save_file(state, file, metadata={"format": "pt"})
    return path


def load_reference(path: Path | str):
    """transformers' own model of a checkpoint, in float32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def layer_outputs(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(embeddings, output of each decoder layer) of one full forward pass of transformers' model."""
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda module, args, output: outputs.append(output.detach().clone()))
        for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            model(input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        embeddings = model.model.embed_tokens(input_ids)
    return embeddings, outputs


def greedy_reference(model, input_ids: list[int], new_tokens: int, eos: bool = False) -> list[int]:
    """transformers' own greedy ``generate``; exactly ``new_tokens`` tokens unless ``eos`` lets it stop early."""
    config = model.generation_config
    saved = config.eos_token_id
    if not eos:
        config.eos_token_id = None  # keeps every logit intact (min_new_tokens would mask the eos logit instead)
    try:
        ids = torch.tensor([input_ids])
        with torch.no_grad():
            output = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens
            )
    finally:
        config.eos_token_id = saved
    return output[0, len(input_ids) :].tolist()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal within float32 rounding, relative to the tensor's scale (hidden states grow with depth)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * max(scale, 1.0))
