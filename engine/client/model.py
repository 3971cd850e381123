"""The distributed causal LM: embeddings, final norm and LM head run locally; every block runs in the swarm."""

from __future__ import annotations

import torch
from torch import nn

from engine.client.config import ClientSettings
from engine.client.remote import RemoteBlocks
from engine.client.session import InferenceSession
from engine.client.swarm import SwarmConnection
from engine.models import get_family
from engine.records import default_dht_prefix
from engine.weights import ModelSource, resolve_model


class CausalLMParts(nn.Module):
    """The parts of a causal LM that stay with the client: embeddings, final norm and LM head (frozen).

    Subclasses add ``blocks``: remote (``DistributedCausalLM``) or in this process (``engine.client.local``).
    """

    def __init__(self, source: ModelSource, dtype: torch.dtype = torch.float32):
        super().__init__()
        config = source.config
        family = get_family(config)
        self.source, self.config, self.family = source, config, family
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.embed_tokens.load_state_dict({"weight": source.read([family.embed_weight], dtype)[family.embed_weight]})
        scale = family.embed_scale(config)
        # scaled as transformers does it: the factor rounded to the weights' dtype first
        self.register_buffer("embed_scale", None if scale is None else torch.tensor(scale).to(dtype), persistent=False)
        norm_prefix = family.embed_norm_prefix(config)
        self.embed_norm = None if norm_prefix is None else family.make_norm(config).to(dtype)
        if self.embed_norm is not None:
            self.embed_norm.load_state_dict(source.read_prefix(norm_prefix, dtype))
        self.norm = family.make_norm(config).to(dtype)
        self.norm.load_state_dict(source.read_prefix(family.norm_prefix, dtype))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        if config.tie_word_embeddings or not source.has_tensor(family.head_weight):
            self.lm_head.weight = self.embed_tokens.weight
        else:
            self.lm_head.load_state_dict({"weight": source.read([family.head_weight], dtype)[family.head_weight]})
        self.softcap = family.logit_softcap(config)
        self.requires_grad_(False)  # the model's own weights stay frozen; fine-tuning adds its own parameters

    @property
    def num_blocks(self) -> int:
        return self.config.num_hidden_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The hidden states block 0 takes for these tokens."""
        hidden = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            hidden = hidden * self.embed_scale
        if self.embed_norm is not None:
            hidden = self.embed_norm(hidden)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(hidden))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class DistributedCausalLM(CausalLMParts):
    """A causal LM whose blocks live on servers; it loads only the embeddings, final norm and LM head.

    ``forward`` goes through the swarm's forward/backward RPCs (training, scoring); generation uses
    ``inference_session``, which keeps attention caches on the servers.
    """

    def __init__(self, source: ModelSource, swarm: SwarmConnection, dtype: torch.dtype = torch.float32):
        super().__init__(source, dtype)
        self.swarm = swarm
        self.blocks = RemoteBlocks(swarm, self.num_blocks)

    def forward(
        self, input_ids: torch.Tensor, prompts: torch.Tensor | None = None, adapter: str | None = None
    ) -> torch.Tensor:
        """Logits (batch, tokens, vocab) for full sequences, with gradients through the swarm.

        ``prompts`` (blocks, batch, prefix, hidden): deep prompts; ``adapter``: a LoRA adapter the servers apply.
        """
        return self.logits(self.blocks(self.embed(input_ids), prompts, adapter=adapter))

    def inference_session(
        self,
        max_length: int,
        batch_size: int = 1,
        step_timeout: float | None = None,
        adapter: str | None = None,
        prompts: torch.Tensor | None = None,
    ) -> InferenceSession:
        """A session surviving server failures; ``step_timeout`` defaults to the connection's settings.

        ``adapter`` and deep ``prompts`` (blocks, batch, prefix, hidden) hold for the whole session.
        """
        return InferenceSession(
            self.swarm, self.num_blocks, max_length, batch_size, step_timeout, adapter=adapter, prompts=prompts
        )

    def close(self) -> None:
        """Leave the swarm (stops the client's P2P daemon and DHT node)."""
        self.swarm.close()

    @classmethod
    def connect(
        cls,
        model: str,
        initial_peers: list[str],
        dht_prefix: str | None = None,
        dtype: torch.dtype = torch.float32,
        settings: ClientSettings | None = None,
    ) -> DistributedCausalLM:
        """Resolve ``model`` locally (for its head and tokenizer) and join the swarm that serves its blocks."""
        source = resolve_model(model)
        swarm = SwarmConnection(initial_peers, dht_prefix or default_dht_prefix(model), settings=settings)
        try:
            return cls(source, swarm, dtype)
        except BaseException:
            swarm.close()
            raise
