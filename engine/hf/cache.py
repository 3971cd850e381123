"""The cache contract between transformers' attention layers and our preallocated session caches.

transformers' attention modules call ``cache.update(key, value, layer_idx, ...)`` and attend over what it
returns. The extra arguments changed over 5.x: up to 5.23 a positional ``cache_kwargs`` dict, since 5.24 a
``kwargs=`` keyword. We accept and ignore any of them: positions are ours to manage (see ``SpanCache``).
The decoder layer takes the cache as ``past_key_values`` up to 5.23 and as ``cache`` from 5.24 on (the old
name is deprecated until 5.40), so the keyword is read from the layer's signature once per class. Falcon's and
BLOOM's layers still take it as ``layer_past`` and call ``update(key, value, layer_idx)`` with no extra argument;
Falcon's layers hand ``update`` one key head when multi-query and every query head in the new architecture
(``FalconFamily.kv_shape`` sizes the cache for that).
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn


class LayerCache:
    """Base of caches handed to transformers layers: ``update`` stores new keys and values for one layer."""

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``key`` and ``value`` of layer ``layer_idx``; return all keys and values it may attend to."""
        raise NotImplementedError


@functools.cache
def cache_keyword(layer_class: type[nn.Module]) -> str:
    """The keyword under which ``layer_class.forward`` takes the attention cache."""
    parameters = inspect.signature(layer_class.forward).parameters
    for name in ("cache", "past_key_values", "past_key_value", "layer_past"):
        if name in parameters:
            return name
    raise TypeError(
        f"{layer_class.__name__}.forward takes no cache argument (looked for cache, past_key_values, layer_past); "
        "this transformers version changed the decoder layer's signature: update engine/hf/cache.py"
    )


def cache_argument(layer: nn.Module, cache: LayerCache | None) -> dict[str, LayerCache | None]:
    """Keyword arguments that pass ``cache`` to ``layer`` under the name its transformers version expects."""
    return {cache_keyword(type(layer)): cache}
