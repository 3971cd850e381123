"""Convert a GGUF file once into a cached safetensors directory.

GGUF stores all blocks in one quantized file; a server of a few blocks must be able to read only its own
tensors, which safetensors allows. The conversion dequantizes once (to float32) and is reused by every later
process; concurrent first starts are safe because the directory appears by an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs

logger = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """Where converted models live; ``NECTAR_CACHE_DIR`` overrides it (tests, shared lab disks)."""
    override = os.environ.get("NECTAR_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("nectar")) / "models"


def converted_dir(gguf_path: Path, cache_root: Path | None = None) -> Path:
    """The cache directory for this exact file (its name, size and modification time)."""
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return (cache_root or default_cache_root()) / f"{gguf_path.stem}-{digest}"


def ensure_converted(gguf_path: Path, cache_root: Path | None = None) -> Path:
    """Return a safetensors directory with the model and tokenizer of ``gguf_path``, converting on first use."""
    target = converted_dir(gguf_path, cache_root)
    if (target / "config.json").exists():
        return target
    from safetensors.torch import save_file

    from engine.hf.gguf import gguf_model_type, load_gguf
    from engine.models.registry import check_supported

    check_supported(gguf_model_type(gguf_path))  # refused before the slow conversion

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s to safetensors (once) in %s", gguf_path.name, target)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        loaded = load_gguf(gguf_path)
        save_file(loaded.state, work / "model.safetensors", metadata={"format": "pt"})
        (work / "config.json").write_text(json.dumps(loaded.config, indent=2))
        loaded.model.generation_config.save_pretrained(work)
        loaded.tokenizer.save_pretrained(work)
        try:
            os.rename(work, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
