"""A contiguous span of decoder layers and the attention cache one session keeps on it."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from engine.hf.cache import LayerCache, cache_argument
from engine.models.base import ModelFamily, StepInputs
from engine.models.registry import get_family
from engine.quantization import quantize_linears
from engine.weights import ModelSource


class SpanCache(LayerCache):
    """Keys and values of one session on some blocks, allocated once at the session's maximum length.

    Preallocating makes the server's cache budget a hard limit (no growth mid-session) and lets a step roll
    back to an earlier position by moving ``length``, which is how a replayed step rebuilds state.
    It implements the one method transformers' attention layers call: ``update`` (see ``engine.hf.cache``).
    """

    def __init__(
        self,
        first_block: int,
        num_blocks: int,
        batch_size: int,
        max_length: int,
        kv_shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        heads, head_dim = kv_shape
        shape = (num_blocks, batch_size, heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.first_block = first_block
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0  # tokens whose keys and values are final

    @staticmethod
    def bytes_per_token(num_blocks: int, kv_shape: tuple[int, int], dtype: torch.dtype) -> int:
        heads, head_dim = kv_shape
        return 2 * num_blocks * heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slot = layer_idx - self.first_block
        end = self.length + key.shape[2]
        self.keys[slot, :, :, self.length : end] = key
        self.values[slot, :, :, self.length : end] = value
        return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]


class BatchedStepCache(LayerCache):
    """The caches of several sessions as one cache of a batch of one-token steps (``BlockSpan.batched_step``).

    ``update`` writes each row's new key and value into its own session's cache at its own position, then hands
    the layer every row's keys and values padded on the right to the longest row; the step's mask (``row_masks``)
    hides the padding. Rows of one session are consecutive and its cache holds them in order.
    """

    def __init__(self, caches: list[SpanCache], positions: list[int]):
        self.caches, self.positions = caches, positions
        self.keys_needed = max(positions) + 1

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, heads, _, head_dim = key.shape
        keys = key.new_zeros(rows, heads, self.keys_needed, head_dim)
        values = value.new_zeros(rows, heads, self.keys_needed, head_dim)
        row = 0
        for cache, position in zip(self.caches, self.positions, strict=True):
            slot, end, rows_of = layer_idx - cache.first_block, position + 1, slice(row, row + cache.batch_size)
            cache.keys[slot, :, :, position:end] = key[rows_of]
            cache.values[slot, :, :, position:end] = value[rows_of]
            keys[rows_of, :, :end] = cache.keys[slot, :, :, :end]
            values[rows_of, :, :end] = cache.values[slot, :, :, :end]
            row += cache.batch_size
        return keys, values


class BlockSpan(nn.Module):
    """Blocks [start, end) of a model, run with or without a session's attention cache."""

    def __init__(
        self,
        family: ModelFamily,
        config: PretrainedConfig,
        start: int,
        layers: list[nn.Module],
    ):
        super().__init__()
        self.family, self.config = family, config
        self.start, self.end = start, start + len(layers)
        self.layers = nn.ModuleList(layers)
        self.positions = family.make_positions(config)
        self.windows = [family.sliding_window(config, index) for index in range(self.start, self.end)]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype hidden states and caches take: that of the float parameters (quantized ones are integers)."""
        return next(tensor.dtype for tensor in self.layers.parameters() if tensor.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(self.layers.parameters()).device

    def new_cache(self, start: int, end: int, batch_size: int, max_length: int) -> SpanCache:
        return SpanCache(
            start, end - start, batch_size, max_length, self.family.kv_shape(self.config), self.dtype, self.device
        )

    def forward(
        self,
        hidden: torch.Tensor,
        position: int = 0,
        cache: SpanCache | None = None,
        start: int | None = None,
        end: int | None = None,
        prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run blocks [start, end) (default: the whole span) on ``hidden`` of shape (batch, tokens, hidden).

        With a cache, ``position`` is where the new tokens start and the cache grows by their number.
        ``prompts`` (blocks, batch, prefix, hidden), if given, are added to the first prefix positions of the
        input of each block (deep prompt tuning).
        """
        start = self.start if start is None else start
        end = self.end if end is None else end
        step = StepInputs(self.family, self.config, self.positions, hidden, position)
        if cache is not None:
            cache.length = position  # the caller checked position <= cache.length; a smaller one rolls back
        for index in range(start, end):
            if prompts is not None:
                hidden = _add_prompt(hidden, prompts[index - start], position)
            layer = self.layers[index - self.start]
            inputs = {**step.for_layer(index), **cache_argument(layer, cache)}
            hidden = self.family.run_layer(layer, hidden, inputs)
        if cache is not None:
            cache.length = position + step.new_tokens
        return hidden

    def batched_step(
        self, hidden: torch.Tensor, positions: list[int], caches: list[SpanCache], start: int, end: int
    ) -> torch.Tensor:
        """One-token steps of several sessions as one forward of blocks [start, end): ``hidden`` (rows, 1, hidden)
        holds each cache's rows (``cache.batch_size`` of them) in the order of ``caches``; ``positions`` are where
        each session's new token goes (its cache rolls back to it first, as in ``forward``)."""
        row_positions = torch.tensor(
            [position for position, cache in zip(positions, caches, strict=True) for _ in range(cache.batch_size)],
            device=hidden.device,
        )
        step = StepInputs(self.family, self.config, self.positions, hidden, 0, row_positions)
        batched = BatchedStepCache(caches, positions)
        for index in range(start, end):
            layer = self.layers[index - self.start]
            inputs = {**step.for_layer(index), **cache_argument(layer, batched)}
            hidden = self.family.run_layer(layer, hidden, inputs)
        for cache, position in zip(caches, positions, strict=True):
            cache.length = position + 1
        return hidden


def _add_prompt(hidden: torch.Tensor, prompt: torch.Tensor, position: int) -> torch.Tensor:
    """Add a block's trainable prompt to the positions of the prefix that this step carries."""
    prefix = prompt.shape[1]
    if position >= prefix:
        return hidden
    covered = min(prefix - position, hidden.shape[1])
    head = hidden[:, :covered] + prompt[:, position : position + covered].to(hidden.dtype)
    return torch.cat([head, hidden[:, covered:]], dim=1)


def load_span(
    source: ModelSource, start: int, end: int, dtype: torch.dtype, device: str = "cpu", quantization: str = "none"
) -> BlockSpan:
    """Build blocks [start, end) from a checkpoint, reading only their tensors.

    Layers are created on the meta device and take the loaded tensors as their parameters, so no memory is
    spent on a random initialization that would be overwritten. With ``quantization`` (int8, nf4) each block's
    linear layers are quantized as soon as the block is read, so only one block is ever held in float.
    """
    config = source.config
    family = get_family(config)
    total = config.num_hidden_layers
    if not 0 <= start < end <= total:
        raise ValueError(f"block range {start}:{end} is outside the model's blocks 0:{total}")
    layers = []
    for index in range(start, end):
        with torch.device("meta"):
            layer = family.make_layer(config, index)
        state = family.block_state(source.read_prefix(family.block_prefix(index), dtype=dtype))
        load_device = device if quantization == "none" else "cpu"  # bitsandbytes quantizes on the move to device
        layer.load_state_dict({name: t.to(load_device) for name, t in state.items()}, assign=True, strict=True)
        del state
        layer = quantize_linears(layer, quantization, dtype, device, family.quantizable)
        layers.append(layer.eval().requires_grad_(False))
    span = BlockSpan(family, config, start, layers)
    return span.to(device)
