"""Load a GGUF file through transformers, which dequantizes it and maps llama.cpp names to its own.

Depends on ``from_pretrained(directory, gguf_file=name)`` for the tokenizer and the model (it needs the
``gguf`` package), on the loaded tensors being plain float tensors, and on the config carrying a
``quantization_config`` entry for GGUF that must not be saved: transformers refuses ``save_pretrained`` on a
model loaded from GGUF, so the caller writes the tensors and the config itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class LoadedGGUF:
    state: dict[str, torch.Tensor]  # float32 tensors, transformers' names; the LM head left out when tied
    config: dict  # config.json contents, without the GGUF quantization entry
    model: object  # the transformers model (for its generation config)
    tokenizer: object


def load_gguf(gguf_path: Path) -> LoadedGGUF:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only on first conversion

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    return LoadedGGUF(state, config, model, tokenizer)
