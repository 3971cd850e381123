"""What transformers itself computes, for tests to compare spans and the swarm against.

Not a test module: helpers shared by the span, partial-loading and swarm tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import make_tiny_checkpoint
from safetensors.torch import load_file, save_file

FAMILY_SEEDS = {"llama": 0, "mistral": 1, "qwen2": 2, "qwen3": 3, "bloom": 2}  # seeds with varied greedy output


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


def decoder_layers(model) -> torch.nn.ModuleList:
    """transformers' list of decoder layers of ``model``, found where the family's checkpoint names put it."""
    from engine.models import get_family

    return model.get_submodule(get_family(model.config).layers_prefix.rstrip("."))


def final_norm(model) -> torch.nn.Module:
    from engine.models import get_family

    return model.get_submodule(get_family(model.config).norm_prefix.rstrip("."))


def layer_outputs(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(input of block 0, output of each decoder layer) of one full forward pass of transformers' model.

    The input of block 0 is what the client sends the swarm: embeddings as the family prepares them (scaled for
    Gemma, normalized for BLOOM), captured from the model itself.
    """
    outputs: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    layers = decoder_layers(model)

    def keep_input(module, args, kwargs):
        inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def keep_output(module, args, output):
        outputs.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    hooks = [layer.register_forward_hook(keep_output) for layer in layers]
    hooks.append(layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs[0], outputs


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
