"""Find a model and read only the tensors that a caller needs.

A model is named by a local directory (safetensors, single file or sharded with an index), a repository id
already in the local Hugging Face cache (never downloaded), a GGUF file (converted once, see ``gguf_cache``),
or an alias of a model that a Python package ships (``packaged_models``): ``smollm2-135m`` is the embedded default.
A server of a few blocks reads only those blocks' tensors: safetensors maps the files and we copy out just the
named tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from engine.gguf_cache import ensure_converted
from engine.hf.masks import use_sdpa
from engine.packaged_models import ALIASES, PackageMissingError, alias_path

DEFAULT_MODEL = "smollm2-135m"


class ModelNotFoundError(FileNotFoundError):
    """The name is no directory, GGUF file, alias or cached model."""


__all__ = ["ALIASES", "DEFAULT_MODEL", "ModelNotFoundError", "ModelSource", "alias_path", "resolve_model"]


@dataclass
class ModelSource:
    """A local safetensors checkpoint directory and the name the user gave for it."""

    path: Path
    name: str
    _files: dict[Path, object] = field(default_factory=dict, repr=False)

    @cached_property
    def config(self) -> PretrainedConfig:
        return use_sdpa(AutoConfig.from_pretrained(self.path))

    @cached_property
    def weight_map(self) -> dict[str, str]:
        """Tensor name -> file name, from the shard index or the single file's header."""
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            return json.loads(index.read_text())["weight_map"]
        single = self.path / "model.safetensors"
        if not single.exists():
            raise ModelNotFoundError(f"{self.path} has no model.safetensors or model.safetensors.index.json")
        with safe_open(single, framework="pt") as handle:
            return {name: single.name for name in handle.keys()}  # noqa: SIM118 (safe_open is no dict)

    def has_tensor(self, name: str) -> bool:
        return name in self.weight_map

    def read(self, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Copy the named tensors out of their files; nothing else is read into memory."""
        by_file: dict[str, list[str]] = {}
        for name in names:
            if name not in self.weight_map:
                raise KeyError(f"tensor {name!r} is not in the checkpoint at {self.path}")
            by_file.setdefault(self.weight_map[name], []).append(name)
        tensors = {}
        for file_name, file_names in by_file.items():
            with safe_open(self.path / file_name, framework="pt") as handle:
                for name in file_names:
                    tensor = handle.get_tensor(name)
                    tensors[name] = tensor.to(dtype) if dtype is not None else tensor
        return tensors

    def read_prefix(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """All tensors under ``prefix``, with the prefix stripped from their names."""
        names = [name for name in self.weight_map if name.startswith(prefix)]
        if not names:
            raise KeyError(f"no tensors under {prefix!r} in the checkpoint at {self.path}")
        return {name[len(prefix) :]: tensor for name, tensor in self.read(names, dtype).items()}

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)


def resolve_model(name: str | Path) -> ModelSource:
    """Turn what the user typed into a local safetensors checkpoint, or say clearly why not."""
    text = str(name)
    if text in ALIASES:
        try:
            return ModelSource(ensure_converted(alias_path(text)), text)
        except PackageMissingError as error:
            raise ModelNotFoundError(str(error)) from None
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(ensure_converted(path), text)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json: not a model checkpoint")
        return ModelSource(path, text)
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
    cached = _from_hf_cache(text)
    if cached is not None:
        return ModelSource(cached, text)
    raise ModelNotFoundError(
        f"model {text!r} not found: no such directory or .gguf file, no alias ({', '.join(ALIASES)}), "
        "and not in the local Hugging Face cache"
    )


def _from_hf_cache(repo_id: str) -> Path | None:
    """The snapshot directory of a repository already downloaded to the Hugging Face cache; never downloads."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
    return path if (path / "config.json").exists() else None
