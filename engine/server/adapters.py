"""Trained LoRA adapters (PEFT format) served on top of a server's frozen blocks, chosen per request by name.

A PEFT LoRA adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors``. A server
reads only the tensors of its own blocks and hooks each adapted linear layer: the layer's output gets
``x @ A.T @ B.T * scale`` added when that adapter is active. The base weights are never changed, so one
server serves the plain model and any number of adapters at once; the compute thread activates the
adapter a request asks for (``AdapterSet.use``) around each step.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from engine.models.span import BlockSpan
from engine.wire import BadRequest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT saves tensor names under the wrapper's path
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class AdapterError(ValueError):
    """An adapter directory is missing, malformed or uses a PEFT feature the swarm cannot serve."""


@dataclass(frozen=True)
class LoraWeights:
    """One adapted linear layer: ``A`` (rank, in), ``B`` (out, rank) and the output scale."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float


def adapter_name(path: str | Path) -> str:
    """The name a server announces for an adapter and clients ask for: its directory's name."""
    return Path(path).expanduser().resolve().name


def _read_config(path: Path) -> dict:
    config_file = path / CONFIG_FILE
    if not config_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise AdapterError(f"{path} is not a PEFT adapter: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{config_file} is not valid JSON: {error}") from None
    problems = []
    if str(config.get("peft_type", "")).upper() != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, only LORA is served")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out layers are not supported")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("adapters that train biases are not supported")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} would need whole layers the swarm cannot swap")
    if problems:
        raise AdapterError(f"adapter {path.name}: " + "; ".join(problems))
    return config


def _alpha(config: dict, module_name: str) -> float:
    """``lora_alpha``, or the ``alpha_pattern`` entry matching this module the way PEFT matches it."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return float(alpha)
    return float(config.get("lora_alpha", 8))


def read_lora(path: str | Path, span: BlockSpan, dtype: torch.dtype) -> dict[tuple[int, str], LoraWeights]:
    """The LoRA weights of ``span``'s blocks, keyed by (block index, module path inside the block).

    Only the tensors of these blocks are read. Tensors outside every block (an adapted LM head or
    embedding) are refused: servers do not hold those layers.
    """
    path = Path(path).expanduser()
    config = _read_config(path)
    layers_prefix = span.family.layers_prefix
    parts: dict[tuple[int, str], dict[str, str]] = {}
    with safe_open(path / WEIGHTS_FILE, framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is no dict)
            name = key.removeprefix(PEFT_PREFIX)
            match = _LORA_KEY.match(name)
            if match is None or not match["module"].startswith(layers_prefix):
                raise AdapterError(f"adapter {path.name}: tensor {key!r} is not a LoRA weight of a transformer block")
            index_text, _, module = match["module"][len(layers_prefix) :].partition(".")
            if not index_text.isdigit() or not module:
                raise AdapterError(f"adapter {path.name}: cannot tell the block of tensor {key!r}")
            index = int(index_text)
            if span.start <= index < span.end:
                parts.setdefault((index, module), {})[match["part"]] = key
        weights = {}
        for (index, module), keys in parts.items():
            if set(keys) != {"A", "B"}:
                raise AdapterError(f"adapter {path.name}: block {index} {module} lacks lora_A or lora_B")
            down = handle.get_tensor(keys["A"]).to(dtype)
            up = handle.get_tensor(keys["B"]).to(dtype)
            rank = down.shape[0]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != rank:
                raise AdapterError(f"adapter {path.name}: block {index} {module} has mismatched LoRA shapes")
            alpha = _alpha(config, f"{layers_prefix}{index}.{module}")
            scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
            weights[(index, module)] = LoraWeights(down, up, scale)
    return weights


class AdapterSet:
    """The adapters a server holds and the one the compute thread is running now (None: the base model).

    Only the compute thread calls ``use`` and runs the span, so one ``active`` attribute is enough.
    """

    def __init__(self, span: BlockSpan):
        self.span = span
        self.names: list[str] = []
        self.active: str | None = None
        self._layers: dict[tuple[int, str], dict[str, LoraWeights]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def load(self, path: str | Path) -> str:
        """Read an adapter for this span and hook the layers it adapts; returns its name."""
        name = adapter_name(path)
        if name in self.names:
            raise AdapterError(f"two adapters are named {name!r}; adapter directories need distinct names")
        weights = read_lora(path, self.span, self.span.dtype)
        for (index, module_path), lora in weights.items():
            layer = self.span.layers[index - self.span.start]
            try:
                module = layer.get_submodule(module_path)
            except AttributeError:
                raise AdapterError(f"adapter {name}: block {index} has no layer {module_path!r}") from None
            if not isinstance(module, nn.Linear):
                raise AdapterError(f"adapter {name}: block {index} {module_path} is not a linear layer")
            if lora.down.shape[1] != module.in_features or lora.up.shape[0] != module.out_features:
                raise AdapterError(f"adapter {name}: block {index} {module_path} does not fit the layer's shape")
            key = (index, module_path)
            if key not in self._layers:
                self._layers[key] = {}
                self._hooks.append(module.register_forward_hook(self._hook(self._layers[key])))
            device = module.weight.device
            self._layers[key][name] = LoraWeights(lora.down.to(device), lora.up.to(device), lora.scale)
        self.names.append(name)
        return name

    def _hook(self, loras: dict[str, LoraWeights]):
        def add_lora(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            lora = loras.get(self.active) if self.active is not None else None
            if lora is None:
                return output
            return output + (args[0] @ lora.down.T) @ lora.up.T * lora.scale

        return add_lora

    def check(self, name: object) -> str | None:
        """A request's ``adapter`` field: None (the base model) or the name of an adapter held here."""
        if name is None:
            return None
        if not isinstance(name, str) or name not in self.names:
            held = ", ".join(self.names) or "none"
            raise BadRequest(f"adapter {name!r} is not served here (this server has: {held})")
        return name

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Run the span with adapter ``name`` (checked before) for the duration of the block."""
        previous, self.active = self.active, name
        try:
            yield
        finally:
            self.active = previous

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
