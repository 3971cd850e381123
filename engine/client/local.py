"""The client's model with every block in this process: the servers' own span code, no network.

A baseline for benchmarks and a swarm-free model for tests of the fine-tuning code; it has the interface of
``DistributedCausalLM`` that training uses (``embed``, ``blocks``, ``logits``).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.client.model import CausalLMParts
from engine.models.span import BlockSpan, load_span
from engine.weights import ModelSource


class LocalBlocks(nn.Module):
    """All blocks in this process, called like ``RemoteBlocks`` (hidden states, optional deep prompts)."""

    def __init__(self, span: BlockSpan):
        super().__init__()
        self.span = span

    def forward(
        self, hidden: torch.Tensor, prompts: torch.Tensor | None = None, adapter: str | None = None
    ) -> torch.Tensor:
        if adapter is not None:
            raise ValueError("LoRA adapters are served by swarm servers; local blocks run the base model only")
        return self.span(hidden, 0, None, None, None, prompts)


class LocalCausalLM(CausalLMParts):
    """``DistributedCausalLM``'s training interface with all blocks loaded here."""

    def __init__(self, source: ModelSource, dtype: torch.dtype = torch.float32, quantization: str = "none"):
        super().__init__(source, dtype)
        self.blocks = LocalBlocks(load_span(source, 0, self.num_blocks, dtype, quantization=quantization))

    def forward(self, input_ids: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.blocks(self.embed(input_ids), prompts))
