"""What one process computes for the fine-tuning tests to compare the swarm against.

Not a test module. The reference is transformers' own model of the checkpoint: the trainable prefix goes in
front of the first decoder layer's input (put there by a forward pre-hook, since some families transform
``inputs_embeds`` before that layer) and each decoder layer gets its deep prompt added by another pre-hook, so
nothing of the engine's span code is shared with what it is checked against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from reference import decoder_layers, layer_outputs, load_reference

from engine.client.ptune import causal_lm_loss


@contextmanager
def deep_prompt_hooks(model, deep: torch.Tensor | None) -> Iterator[None]:
    """Add ``deep[i]`` (batch, prefix, hidden) to the first prefix positions of decoder layer i's input."""
    if deep is None:
        yield
        return

    def hook(index: int):
        def add(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            prefix = deep.shape[2]
            hidden = torch.cat([hidden[:, :prefix] + deep[index], hidden[:, prefix:]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return add

    handles = [
        layer.register_forward_pre_hook(hook(index), with_kwargs=True)
        for index, layer in enumerate(decoder_layers(model))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def replace_first_input(model, hidden: torch.Tensor):
    """A pre-hook handle that makes the first decoder layer take ``hidden`` whatever the model computed before it."""

    def replace(module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return decoder_layers(model)[0].register_forward_pre_hook(replace, with_kwargs=True)


def local_forward(
    model, prefix: torch.Tensor, embeds: torch.Tensor, deep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states before the norm, logits), for the input tokens (prefix dropped), with autograd.

    ``embeds`` are block 0's inputs (what the client sends the swarm).
    """
    captured: list[torch.Tensor] = []
    layers = decoder_layers(model)
    inputs = torch.cat([prefix.expand(embeds.shape[0], -1, -1), embeds], dim=1)
    handles = [
        replace_first_input(model, inputs),
        layers[-1].register_forward_hook(lambda module, args, output: captured.append(output)),
    ]
    try:
        with deep_prompt_hooks(model, deep):
            logits = model(inputs_embeds=torch.zeros_like(inputs), use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    output = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
    return output[:, prefix.shape[0] :], logits[:, prefix.shape[0] :]


def local_hidden(model, prefix: torch.Tensor, embeds: torch.Tensor, deep: torch.Tensor | None) -> torch.Tensor:
    return local_forward(model, prefix, embeds, deep)[0]


def local_lm_step(model, prefix, deep, embeds, labels) -> dict[str, torch.Tensor]:
    """Loss and gradients of a prompt-tuning LM step in one process (``deep`` is (blocks, prefix, hidden))."""
    prefix = prefix.detach().clone().requires_grad_(True)
    embeds = embeds.detach().clone().requires_grad_(True)
    leaves = {"prefix": prefix, "inputs": embeds}
    expanded = None
    if deep is not None:
        deep = deep.detach().clone().requires_grad_(True)
        leaves["deep"] = deep
        expanded = deep.unsqueeze(1).expand(-1, embeds.shape[0], -1, -1)
    loss = causal_lm_loss(local_forward(model, prefix, embeds, expanded)[1], labels)
    loss.backward()
    return {"loss": loss.detach(), **{name: leaf.grad for name, leaf in leaves.items()}}


def local_model(path: Path):
    """``DistributedCausalLM``'s client interface with every block in this process, for tests that exercise the
    fine-tuning modules without a swarm (saving, loading, data)."""
    from engine.client.local import LocalCausalLM
    from engine.weights import resolve_model

    return LocalCausalLM(resolve_model(str(path)))


def make_lora_adapter(checkpoint: Path, path: Path, seed: int = 0) -> Path:
    """A random (non-zero) PEFT LoRA adapter on q, v, o and down projections, saved in PEFT's format."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
        alpha_pattern={"down_proj": 16},
    )
    get_peft_model(load_reference(checkpoint), config).save_pretrained(path)
    return path


def peft_layer_outputs(checkpoint: Path, adapter_path: Path, input_ids: torch.Tensor) -> list[torch.Tensor]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_reference(checkpoint), adapter_path).eval()
    return layer_outputs(model.base_model.model, input_ids)[1]
