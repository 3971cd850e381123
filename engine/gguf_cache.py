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
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only on first conversion

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s to safetensors (once) in %s", gguf_path.name, target)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        # transformers refuses to save a model loaded from GGUF; its tensors are plain float32 by now, so
        # write them and a config without the GGUF quantization entry ourselves
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, work / "model.safetensors", metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        (work / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            os.rename(work, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
