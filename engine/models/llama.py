"""The Llama-architecture family: Llama 2/3, SmolLM2, Mistral, Qwen2 and Qwen3 share one layer layout.

transformers gives each its own classes (with small differences such as Qwen3's q/k norms or Mistral's
sliding window); the tensor names and the way a span is driven are the same, so one module serves all.
"""

from engine.models.base import ModelFamily

LLAMA_LIKE_FAMILIES = (
    ModelFamily("llama", ("llama",), "transformers.models.llama.modeling_llama", "Llama"),
    ModelFamily("mistral", ("mistral",), "transformers.models.mistral.modeling_mistral", "Mistral"),
    ModelFamily("qwen2", ("qwen2",), "transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    ModelFamily("qwen3", ("qwen3",), "transformers.models.qwen3.modeling_qwen3", "Qwen3"),
)
