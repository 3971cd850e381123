"""Load a GGUF file through transformers, which dequantizes it and maps llama.cpp names to its own.

Depends on ``from_pretrained(directory, gguf_file=name)`` for the tokenizer and the model (it needs the
``gguf`` package), on the loaded tensors being plain float tensors, and on the config carrying a
``quantization_config`` entry for GGUF that must not be saved: transformers refuses ``save_pretrained`` on a
model loaded from GGUF, so the caller writes the tensors and the config itself.

``gguf_model_type`` reads only the file's header, so that an unsupported model is refused before the slow
conversion. It depends on transformers naming a GGUF model's type after its ``general.architecture`` field,
except for the renames in ``_MODEL_TYPES`` (from ``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

_MODEL_TYPES = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
# GGUF value types (the format's specification): fixed sizes of the scalar ones; 8 is a string, 9 an array
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


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


def gguf_model_type(gguf_path: Path) -> str:
    """The transformers model type of a GGUF file, read from its header (no tensor is read)."""
    with open(gguf_path, "rb") as file:
        if file.read(4) != b"GGUF":
            raise ValueError(f"{gguf_path} is not a GGUF file")
        version, _, kv_count = struct.unpack("<IQQ", file.read(20))
        if version < 2:
            raise ValueError(f"{gguf_path} is GGUF version {version}; versions 2 and later are supported")
        for _ in range(kv_count):
            key = _read_string(file)
            (value_type,) = struct.unpack("<I", file.read(4))
            if key == "general.architecture" and value_type == _STRING:
                architecture = _read_string(file)
                return _MODEL_TYPES.get(architecture, architecture)
            _skip_value(file, value_type)
    raise ValueError(f"{gguf_path} names no architecture (general.architecture)")


def _read_string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", file.read(8))
    return file.read(length).decode("utf-8", errors="replace")


def _skip_value(file: BinaryIO, value_type: int) -> None:
    if value_type in _SCALAR_SIZES:
        file.seek(_SCALAR_SIZES[value_type], 1)
    elif value_type == _STRING:
        (length,) = struct.unpack("<Q", file.read(8))
        file.seek(length, 1)
    elif value_type == _ARRAY:
        item_type, count = struct.unpack("<IQ", file.read(12))
        if item_type in _SCALAR_SIZES:
            file.seek(_SCALAR_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _skip_value(file, item_type)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")
