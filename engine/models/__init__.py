"""Model families behind one registry.

- ``base.py``: ``ModelFamily``, the questions a family answers (layer classes, tensor names, cache shape, what each
  layer of a step takes: positions, masks, biases; client-side embedding scale and norm, logit soft-capping).
- ``llama.py``: the Llama-architecture family (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3).
- ``mixtral.py``: Mixtral, the Llama layout with mixture-of-experts MLPs.
- ``falcon.py``: Falcon (rotary or ALiBi, multi-query or grouped keys, parallel attention).
- ``bloom.py``: BLOOM, ALiBi positions as an attention bias.
- ``gemma3.py``: Gemma 3 text models, sliding and global layers with a rotary table per layer type.
- ``span.py``: ``BlockSpan`` runs a contiguous span of layers; ``SpanCache`` is its attention cache.
- ``registry.py``: ``get_family(config)`` picks the family for a config's ``model_type``.

Adding a family means adding one module that defines a ``ModelFamily`` and registering it in ``registry.py``.
"""

from engine.models.base import ModelFamily
from engine.models.registry import UnsupportedModelError, get_family, supported_model_types

__all__ = ["ModelFamily", "UnsupportedModelError", "get_family", "supported_model_types"]
