"""Fine-tuning without a swarm: data validation and tokenization, the trained-prompts file, the server's kept
activations and LoRA adapters (against PEFT's own model), and adapter-aware routing.

The swarm itself (gradients, training, failover, adapters over the wire, the CLI) is in ``test_finetune_swarm``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_checkpoint
from finetune_reference import local_model, make_lora_adapter, peft_layer_outputs
from reference import assert_close, make_lively_checkpoint

from agent.cli import main
from engine.client.finetune import (
    DataError,
    FinetuneSettings,
    collate,
    load_examples,
    load_trained,
    read_records,
    save_trained,
    train,
)
from engine.client.ptune import IGNORE_INDEX, DeepPromptTuning, PromptTuning, SequenceClassifier
from engine.client.routing import serving_adapter
from engine.models.span import load_span
from engine.records import ServerRecord, ServerState
from engine.server.activations import ActivationStore, KeptForward
from engine.server.adapters import AdapterError, AdapterSet, read_lora
from engine.server.backend import SpanBackend
from engine.server.memory import CacheBudget
from engine.weights import resolve_model
from engine.wire import BadRequest


@pytest.fixture(scope="module")
def tokenizer():
    return resolve_model("smollm2-135m").tokenizer()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("finetune") / "llama", "llama")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --- data -----------------------------------------------------------------------------------------------------


def test_prompt_completion_is_a_chat_turn_and_only_the_answer_is_learned(tokenizer, tmp_path: Path) -> None:
    chat_line = json.dumps({"prompt": "Where does Zorp live?", "completion": "On Quillmere."})
    data = write_lines(tmp_path / "data.jsonl", [chat_line, "", json.dumps({"text": "Hello there, world"})])
    chat, text = load_examples(data, tokenizer, max_length=128)
    assert (chat.line, text.line) == (1, 3)
    learned = [token for token, label in zip(chat.input_ids, chat.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned) == "On Quillmere.<|im_end|>"  # the answer and its end of turn, nothing else
    assert chat.input_ids[-1] == tokenizer.eos_token_id
    prompt_text = tokenizer.decode(chat.input_ids[: len(chat.input_ids) - len(learned)])
    assert prompt_text.endswith("<|im_start|>user\nWhere does Zorp live?<|im_end|>\n<|im_start|>assistant\n")
    assert text.labels == text.input_ids  # plain text: every token is learned


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a"', r"bad\.jsonl:2: not valid JSON"),
        ('["prompt", "completion"]', r"bad\.jsonl:2: expected a JSON object, got list"),
        ('{"prompt": "What?"}', r"bad\.jsonl:2: missing field 'completion'"),
        ('{"question": "What?"}', r"bad\.jsonl:2: missing field 'text'.*got \['question'\]"),
        ('{"prompt": "What?", "completion": "   "}', r"bad\.jsonl:2: field 'completion' is empty"),
        ('{"text": 42}', r"bad\.jsonl:2: field 'text' must be a string, got int"),
        (json.dumps({"text": "word " * 400}), r"bad\.jsonl:2: the example is \d+ tokens, more than the max length 64"),
    ],
)
def test_bad_data_names_the_line(tokenizer, tmp_path: Path, line: str, message: str) -> None:
    data = write_lines(tmp_path / "bad.jsonl", [json.dumps({"text": "a fine line"}), line])
    with pytest.raises(DataError, match=message):
        load_examples(data, tokenizer, max_length=64)


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"empty\.jsonl holds no examples"):
        read_records(empty)
    with pytest.raises(DataError, match="cannot read"):
        read_records(tmp_path / "absent.jsonl")


def test_finetune_cli_reports_bad_data_before_joining_a_swarm(tmp_path: Path, capsys) -> None:
    data = write_lines(tmp_path / "data.jsonl", [json.dumps({"prompt": "a", "completion": "b"}), '{"prompt": "c"}'])
    # the peer address is unreachable: the data must fail first, without any network
    code = main(["finetune", "smollm2-135m", "--initial-peers", "/ip4/127.0.0.1/tcp/9", "--data", str(data)])
    assert code == 2
    assert "data.jsonl:2: missing field 'completion'" in capsys.readouterr().err


def test_collate_pads_right_and_never_learns_padding() -> None:
    from engine.client.finetune import Example

    ids, labels = collate([Example([1, 2, 3], [IGNORE_INDEX, 2, 3], 1), Example([4], [4], 2)], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown method 'lora'"):
        FinetuneSettings(method="lora").validate()
    with pytest.raises(ValueError, match="steps must be at least 1"):
        FinetuneSettings(steps=0).validate()


# --- the trained file -------------------------------------------------------------------------------------------


def test_trained_prompts_and_head_survive_save_and_load(tiny: Path, tmp_path: Path) -> None:
    model = local_model(tiny)
    tuning = DeepPromptTuning(model, prefix_length=3, seed=1)
    classifier = SequenceClassifier(tuning, num_labels=3)
    with torch.no_grad():
        tuning.deep.normal_()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    lengths = torch.tensor([4, 3])
    expected = classifier(ids, lengths)

    path = save_trained(tmp_path / "cls.safetensors", classifier, "tiny-llama")
    loaded = load_trained(path, local_model(tiny))
    assert isinstance(loaded, SequenceClassifier) and isinstance(loaded.tuning, DeepPromptTuning)
    torch.testing.assert_close(loaded(ids, lengths), expected, rtol=0, atol=0)

    plain = save_trained(tmp_path / "p.safetensors", PromptTuning(model, 2, adapter="style"), "tiny-llama")
    reloaded = load_trained(plain, model)
    assert type(reloaded) is PromptTuning and reloaded.adapter == "style" and reloaded.prefix_length == 2


def test_loading_refuses_prompts_of_another_model_shape(tiny: Path, tmp_path: Path) -> None:
    other = make_tiny_checkpoint(tmp_path / "six", "llama", num_layers=6)
    path = save_trained(tmp_path / "p.safetensors", DeepPromptTuning(local_model(other), 2), "six")
    with pytest.raises(ValueError, match=r"trained for six \(6 blocks of width 64\); this model has 4 blocks"):
        load_trained(path, local_model(tiny))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_trained(tmp_path / "junk.safetensors", local_model(tiny))


def test_local_training_lowers_the_loss(tmp_path: Path) -> None:
    from engine.client.finetune import Example

    model = local_model(make_lively_checkpoint(tmp_path / "lively", "llama"))
    answer = [5, 6, 7, 8, 9, 10]
    examples = [Example([a, b, *answer], [IGNORE_INDEX] * 2 + answer, 1) for a, b in ((3, 4), (11, 12))]
    losses = train(PromptTuning(model, prefix_length=4), examples, FinetuneSettings(steps=25, lr=0.03, batch_size=2))
    assert losses[-1] < 0.3 * losses[0]


# --- kept activations on the server -----------------------------------------------------------------------------


def kept(nbytes: int, expires: float = 1e9) -> KeptForward:
    empty = torch.empty(0)
    return KeptForward(empty, None, empty, 0, 1, None, nbytes, expires)


def test_activation_store_evicts_oldest_beyond_its_budget_and_expires() -> None:
    now = [0.0]
    store = ActivationStore(100, clock=lambda: now[0])
    assert store.put(("a", "1"), kept(60)) and store.put(("a", "2"), kept(30))
    assert store.put(("b", "1"), kept(50))  # evicts ("a", "1") only
    assert store.pop(("a", "1")) is None and store.used == 80
    assert not store.put(("c", "1"), kept(101))  # never fits
    store.put(("c", "2"), kept(10, expires=5.0))
    now[0] = 6.0
    assert store.pop(("c", "2")) is None
    assert store.pop(("a", "2")) is not None and store.used == 50


def test_backward_from_a_kept_forward_equals_a_recomputed_one(tiny: Path) -> None:
    span = load_span(resolve_model(str(tiny)), 0, 4, torch.float32)
    backend = SpanBackend(span, CacheBudget(2**20), 64, 4096, activations=ActivationStore(2**30))
    torch.manual_seed(0)
    hidden, grad = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    prompts = torch.randn(4, 2, 2, 64)

    output = backend.forward(hidden, 0, 4, prompts, keep=("peer", "step-1"))
    assert len(backend.activations) == 1 and backend.activations.used > 0
    torch.testing.assert_close(output, backend.forward(hidden, 0, 4, prompts), rtol=0, atol=0)
    from_kept = backend.backward(hidden, grad, 0, 4, prompts, keep=("peer", "step-1"))
    assert len(backend.activations) == 0
    recomputed = backend.backward(hidden, grad, 0, 4, prompts)
    for got, want in zip(from_kept, recomputed, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # a backward whose inputs differ from the kept forward's is recomputed, never answered from the wrong graph
    backend.forward(hidden, 0, 4, prompts, keep=("peer", "step-2"))
    other = hidden + 1
    got = backend.backward(other, grad, 0, 4, prompts, keep=("peer", "step-2"))
    for have, want in zip(got, backend.backward(other, grad, 0, 4, prompts), strict=True):
        torch.testing.assert_close(have, want, rtol=0, atol=0)


# --- LoRA adapters ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny, tmp_path_factory.mktemp("adapters") / "tiny-lora")


def test_a_server_span_applies_peft_lora_exactly_and_reads_only_its_blocks(tiny: Path, adapter: Path) -> None:
    span = load_span(resolve_model(str(tiny)), 2, 4, torch.float32)
    assert {index for index, _ in read_lora(adapter, span, torch.float32)} == {2, 3}
    adapters = AdapterSet(span)
    assert adapters.load(adapter) == "tiny-lora"
    ids = torch.tensor([[5, 17, 42, 99, 3, 64, 7]])
    expected = peft_layer_outputs(tiny, adapter, ids)
    with torch.no_grad():
        with adapters.use("tiny-lora"):
            adapted = span(expected[1])
        base = span(expected[1])
    assert_close(adapted, expected[3])
    assert (base - expected[3]).abs().max() > 1e-3  # the adapter changes the output; the base is untouched


def test_adapter_errors_are_clear(tiny: Path, adapter: Path, tmp_path: Path) -> None:
    span = load_span(resolve_model(str(tiny)), 0, 2, torch.float32)
    adapters = AdapterSet(span)
    with pytest.raises(AdapterError, match="needs adapter_config.json and adapter_model.safetensors"):
        adapters.load(tmp_path)
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    config = json.loads((adapter / "adapter_config.json").read_text()) | {"use_dora": True}
    (dora / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="DoRA"):
        adapters.load(dora)
    adapters.load(adapter)
    with pytest.raises(AdapterError, match="two adapters are named 'tiny-lora'"):
        adapters.load(adapter)
    with pytest.raises(BadRequest, match=r"adapter 'other' is not served here \(this server has: tiny-lora\)"):
        adapters.check("other")


def test_routing_keeps_only_servers_with_the_adapter() -> None:
    def record(peer: str, adapters: tuple[str, ...]) -> ServerRecord:
        return ServerRecord(peer, 0, 2, ServerState.ONLINE, adapters=adapters)

    blocks = {0: [record("a", ()), record("b", ("style",))], 1: [record("a", ())]}
    assert [r.peer_id for r in serving_adapter(blocks, "style")[0]] == ["b"]
    assert serving_adapter(blocks, "style")[1] == []
    assert [r.peer_id for r in serving_adapter(blocks, None)[0]] == ["a", "b"]
