"""The questions a model family answers, so that the generic server and client code never branch on a family.

Server side: which layer class, which tensors, how a block's checkpoint tensors map onto the layer, the shape of its
attention cache, and what each layer of a step takes besides the hidden states (positions, masks, biases: see
``StepInputs``). Client side: how token ids become the hidden states block 0 takes, and how the last block's
output becomes logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from engine.hf.layers import (
    build_decoder_layer,
    build_rms_norm,
    build_rotary,
    layer_hidden,
    modeling_class,
    rotary_cos_sin,
)
from engine.hf.masks import attention_mask, row_masks


class StepInputs:
    """What the layers of one step share besides their hidden states, built on first use and reused by the layers
    that agree on it (one mask per window width, one position table per rotary type).

    ``position`` is where the step's ``new_tokens`` start; the cache (if any) already holds ``position`` tokens.
    """

    def __init__(
        self,
        family: ModelFamily,
        config: PretrainedConfig,
        positions: nn.Module | None,
        hidden,
        position,
        row_positions: torch.Tensor | None = None,
    ):
        """``row_positions`` (batch,), for a batch of one-token steps of different sessions: where each row's token
        is (``position`` is then unused); the rows' caches are padded to the longest (see ``BatchedStepCache``)."""
        self.family, self.config, self.positions = family, config, positions
        self.hidden = hidden
        self.position = position
        self.new_tokens = hidden.shape[1]
        self.row_positions = row_positions
        if row_positions is None:
            self.position_ids = torch.arange(position, position + self.new_tokens, device=hidden.device)[None]
        else:
            self.position_ids = row_positions[:, None]
        self._made: dict[object, Any] = {}

    def mask(self, window: int | None) -> torch.Tensor | None:
        """The attention mask of layers with attention ``window`` (None: the whole prefix), shared by those layers.

        For a batch of rows at different positions: (batch, 1, 1, keys), each row's own prefix (and window).
        """

        def make() -> torch.Tensor | None:
            if self.row_positions is None:
                return attention_mask(self.position, self.new_tokens, window, self.hidden.device)
            return row_masks(self.row_positions, window)

        return self.shared(("mask", window), make)

    def shared(self, key: object, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def for_layer(self, index: int) -> dict[str, Any]:
        """Keyword arguments of block ``index`` (its global index) for this step."""
        return self.family.layer_inputs(self, index)


@dataclass(frozen=True)
class ModelFamily:
    """One family of decoder-only models whose layers transformers implements.

    ``module`` is the transformers modeling module and ``class_prefix`` the prefix of its class names
    (``LlamaDecoderLayer``, ``LlamaRotaryEmbedding``, ``LlamaRMSNorm``). Families that differ in more than
    names subclass this and override the methods that differ.
    """

    name: str
    model_types: tuple[str, ...]
    module: str
    class_prefix: str
    layers_prefix: str = "model.layers."
    embed_weight: str = "model.embed_tokens.weight"
    norm_prefix: str = "model.norm."
    head_weight: str = "lm_head.weight"
    layer_suffix: str = "DecoderLayer"

    def _class(self, suffix: str) -> type[nn.Module]:
        return modeling_class(self.module, f"{self.class_prefix}{suffix}")

    # ---- server side: blocks -------------------------------------------------------------------------------------

    def block_prefix(self, index: int) -> str:
        """Prefix of every tensor of block ``index`` in the checkpoint."""
        return f"{self.layers_prefix}{index}."

    def block_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A block's checkpoint tensors (names relative to the block) as its layer's ``load_state_dict`` takes them."""
        return state

    def make_layer(self, config: PretrainedConfig, index: int) -> nn.Module:
        """An empty decoder layer; its global ``index`` selects its slot in the attention cache."""
        return build_decoder_layer(self._class(self.layer_suffix), config, index)

    def make_positions(self, config: PretrainedConfig) -> nn.Module | None:
        """The module that turns positions into what layers take (a rotary embedding), or None (ALiBi)."""
        return build_rotary(self._class("RotaryEmbedding"), config)

    def layer_inputs(self, step: StepInputs, index: int) -> dict[str, Any]:
        """Keyword arguments block ``index`` takes for ``step``: its mask, positions and position embeddings."""
        window = self.sliding_window(step.config, index)
        return {
            "attention_mask": step.mask(window),
            "position_ids": step.position_ids,
            "position_embeddings": self.position_embeddings(step, index),
        }

    def position_embeddings(self, step: StepInputs, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary (cos, sin) pair of block ``index`` for this step's positions."""
        return step.shared("rotary", lambda: rotary_cos_sin(step.positions, step.hidden, step.position_ids))

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Call a layer and return its output hidden states (``inputs`` include the cache keyword)."""
        return layer_hidden(layer(hidden, **inputs))

    def sliding_window(self, config: PretrainedConfig, index: int) -> int | None:
        """Width of block ``index``'s attention window, or None where it sees the whole prefix."""
        layer_types = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if not window:
            return None
        if layer_types is not None and layer_types[index] != "sliding_attention":
            return None
        if getattr(config, "use_sliding_window", True) is False:
            return None
        return int(window)

    def max_context(self, config: PretrainedConfig) -> int:
        return int(getattr(config, "max_position_embeddings", 2048))

    def kv_shape(self, config: PretrainedConfig) -> tuple[int, int]:
        """(key/value heads, head dimension) of one block's attention cache."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return getattr(config, "num_key_value_heads", None) or heads, head_dim

    def batches_steps(self) -> bool:
        """Whether one-token steps of several sessions may run as one batch (``BlockSpan.batched_step``): where the
        family's layers take the generic inputs (``StepInputs.mask`` and per-row positions). ALiBi families build
        their own masks and biases from one position, so their steps run one by one."""
        return type(self).layer_inputs is ModelFamily.layer_inputs

    def quantizable(self, name: str, module: nn.Module) -> bool:
        """Whether a block's linear layer ``name`` may be replaced by a quantized one (all of them, by default)."""
        return True

    # ---- client side: embeddings and head ------------------------------------------------------------------------

    def make_norm(self, config: PretrainedConfig) -> nn.Module:
        """The model's final norm (and, where a family has one, the embeddings' norm)."""
        return build_rms_norm(self._class("RMSNorm"), config)

    def embed_scale(self, config: PretrainedConfig) -> float | None:
        """A factor the token embeddings are multiplied by before block 0 (Gemma: sqrt(hidden size))."""
        return None

    def embed_norm_prefix(self, config: PretrainedConfig) -> str | None:
        """Checkpoint prefix of a norm applied to the token embeddings before block 0 (BLOOM), or None."""
        return None

    def logit_softcap(self, config: PretrainedConfig) -> float | None:
        """``c`` where logits are squashed to c * tanh(logits / c) (Gemma 2/3 may set it), or None."""
        return None
