"""``engine.gguf_cache``: a GGUF file becomes a cached safetensors directory that is read block by block.

The test writes its own tiny Llama GGUF (float32 tensors and a byte-level BPE tokenizer) with the ``gguf``
package, so the conversion runs in seconds instead of dequantizing the embedded 135M-parameter model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.gguf_cache import converted_dir, ensure_converted
from engine.models.span import load_span
from engine.weights import ModelSource, resolve_model

BLOCKS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 64, 4, 2, 128


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins that GPT-2's byte-level BPE uses for bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 2-block Llama GGUF; returns the tensors written under their GGUF names."""
    import gguf

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *byte_level_alphabet(), "he"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(BLOCKS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,)}
    for block in range(BLOCKS):
        shapes |= {
            f"blk.{block}.attn_norm.weight": (HIDDEN,),
            f"blk.{block}.ffn_norm.weight": (HIDDEN,),
            f"blk.{block}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{block}.attn_k.weight": (kv, HIDDEN),
            f"blk.{block}.attn_v.weight": (kv, HIDDEN),
            f"blk.{block}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{block}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{block}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{block}.ffn_down.weight": (HIDDEN, FFN),
        }
    written = {name: (rng.standard_normal(shape) * 0.1).astype(np.float32) for name, shape in shapes.items()}
    for name, array in written.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_converted(tiny_gguf[0], tmp_path_factory.mktemp("cache"))


def test_conversion_writes_a_safetensors_checkpoint_with_tokenizer(converted: Path, tiny_gguf) -> None:
    assert converted == converted_dir(tiny_gguf[0], converted.parent)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (converted / name).exists(), name
    assert not list(converted.parent.glob(".converting-*")), "the work directory was left behind"
    source = ModelSource(converted, "tiny")
    assert source.config.model_type == "llama" and source.config.num_hidden_layers == BLOCKS
    assert "quantization_config" not in source.config.to_dict()
    tokenizer = source.tokenizer()
    assert tokenizer.decode(tokenizer("hello there")["input_ids"]) == "hello there"


def test_converted_checkpoint_is_read_block_by_block(converted: Path, tiny_gguf) -> None:
    source = ModelSource(converted, "tiny")
    block = source.read_prefix("model.layers.1.")
    assert set(block) == {
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    }
    written = tiny_gguf[1]
    # tensors that llama.cpp stores unpermuted come back bit for bit, in float32
    np.testing.assert_array_equal(block["mlp.down_proj.weight"].numpy(), written["blk.1.ffn_down.weight"])
    np.testing.assert_array_equal(block["self_attn.v_proj.weight"].numpy(), written["blk.1.attn_v.weight"])
    embed = source.read(["model.embed_tokens.weight"])["model.embed_tokens.weight"]
    assert embed.dtype == torch.float32
    np.testing.assert_array_equal(embed.numpy(), written["token_embd.weight"])
    span = load_span(source, 1, 2, torch.float32)
    with torch.inference_mode():
        assert span(torch.randn(1, 3, HIDDEN)).shape == (1, 3, HIDDEN)


def test_second_use_reuses_the_conversion(converted: Path, tiny_gguf) -> None:
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted(tiny_gguf[0], converted.parent) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_resolve_model_converts_a_gguf_path_into_the_cache_dir(
    tiny_gguf, converted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NECTAR_CACHE_DIR", str(converted.parent))
    source = resolve_model(tiny_gguf[0])
    assert source.path == converted and source.name == str(tiny_gguf[0])


def test_a_changed_file_gets_a_new_cache_entry(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"one")
    first = converted_dir(path, tmp_path)
    path.write_bytes(b"other")
    assert converted_dir(path, tmp_path) != first
    assert first.name.startswith("model-")


def test_unsupported_architecture_is_refused_before_any_conversion(tmp_path: Path, monkeypatch) -> None:
    import gguf

    from engine.hf import gguf as hf_gguf
    from engine.models import UnsupportedModelError

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_token_list(["a", "b", "c"])  # an array of strings before nothing else: the header scan skips it
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setattr(hf_gguf, "load_gguf", lambda path: pytest.fail("the conversion started"))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported; supported: bloom, falcon, gemma3_text"):
        ensure_converted(path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_header_scan_reads_the_architecture(tiny_gguf, tmp_path: Path) -> None:
    from engine.hf.gguf import gguf_model_type

    assert gguf_model_type(tiny_gguf[0]) == "llama"
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"nope" * 10)
    with pytest.raises(ValueError, match="is not a GGUF file"):
        gguf_model_type(not_gguf)
