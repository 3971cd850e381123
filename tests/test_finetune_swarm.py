"""Fine-tuning through real local swarms on 127.0.0.1: gradients equal one process's, training learns, a killed
server changes nothing, LoRA adapters served by name equal PEFT's model, and ``nectar finetune``/``generate``.

The shared swarm serves a tiny 4-block Llama (weights scaled up so the prompts matter) with servers for 0:2 and
2:4 that hold the LoRA adapter ``tiny-lora`` and one for 0:4 that does not. Every request carries at most 24
tokens, so each batch below is split into chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV, run_nectar
from finetune_reference import local_hidden, local_lm_step, make_lora_adapter
from reference import assert_close, final_norm, layer_outputs, load_reference, make_lively_checkpoint
from swarm_helpers import PreferPeer

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.finetune import Example, FinetuneSettings, load_trained, train
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM
from engine.client.ptune import IGNORE_INDEX, DeepPromptTuning, PromptTuning, SequenceClassifier
from engine.client.routing import MissingBlocksError
from engine.models import supported_model_types

pytestmark = pytest.mark.slow

ADAPTER = "tiny-lora"
MAX_REQUEST_TOKENS = 24
IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 7], [8, 2, 77, 13, 120, 6, 0], [33, 1, 90, 12, 100, 45, 0]])
LENGTHS = torch.tensor([7, 6, 6])  # the last token of rows 2 and 3 is padding
LABELS = torch.where(torch.arange(7) < LENGTHS[:, None], IDS, IGNORE_INDEX)
LABELS[:, :2] = IGNORE_INDEX  # the "prompt" part is not learned


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_checkpoint(tmp_path_factory.mktemp("finetune-swarm") / "llama", "llama")


@pytest.fixture(scope="module")
def adapter(checkpoint: Path) -> Path:
    return make_lora_adapter(checkpoint, checkpoint.parent / ADAPTER)


@pytest.fixture(scope="module")
def swarm(checkpoint: Path, adapter: Path) -> Iterator[LocalSwarm]:
    limits = ["--max-request-tokens", str(MAX_REQUEST_TOKENS)]
    local = LocalSwarm(str(checkpoint), [(0, 2), (2, 4)], [*limits, "--adapters", str(adapter)], env=TEST_ENV)
    try:
        local.start()
        local.add_server((0, 4), ["--adapters"])  # the same limits, no adapter
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def model(swarm: LocalSwarm, checkpoint: Path) -> Iterator[DistributedCausalLM]:
    client = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
    yield client
    client.close()


def peer_ids(swarm: LocalSwarm) -> list[str]:
    return [server.ready["peer_id"] for server in swarm.servers]


def swarm_step(tuning: PromptTuning) -> dict[str, torch.Tensor]:
    """Loss and gradients (prefix, deep prompts, input embeddings) of one LM step through the swarm."""
    embeds = tuning.model.embed(IDS).detach().requires_grad_(True)
    loss = tuning.loss(None, LABELS, inputs_embeds=embeds)
    loss.backward()
    grads = {"loss": loss.detach(), "prefix": tuning.prefix.grad, "inputs": embeds.grad}
    if isinstance(tuning, DeepPromptTuning):
        grads["deep"] = tuning.deep.grad
    return grads


def randomized(tuning: PromptTuning, seed: int = 0) -> PromptTuning:
    """Deep prompts away from their zero start, so that their gradients flow through non-trivial inputs."""
    if isinstance(tuning, DeepPromptTuning):
        with torch.no_grad():
            tuning.deep.copy_(torch.randn(tuning.deep.shape, generator=torch.Generator().manual_seed(seed)))
    return tuning


def assert_gradients_equal_local(model: DistributedCausalLM, reference) -> None:
    """Prompt tuning, deep prompt tuning and a classification head: swarm gradients == one process's."""
    for method in (PromptTuning, DeepPromptTuning):
        tuning = randomized(method(model, prefix_length=3, seed=1))
        got = swarm_step(tuning)
        want = local_lm_step(reference, tuning.prefix, getattr(tuning, "deep", None), model.embed(IDS), LABELS)
        assert set(got) == set(want)
        for name in want:
            assert_close(got[name], want[name])

    classifier = SequenceClassifier(randomized(DeepPromptTuning(model, prefix_length=2, seed=2)), num_labels=3)
    labels = torch.tensor([0, 2, 1])
    classifier.loss(IDS, labels, LENGTHS).backward()
    tuning = classifier.tuning
    prefix = tuning.prefix.detach().clone().requires_grad_(True)
    deep = tuning.deep.detach().clone().requires_grad_(True)
    head = torch.nn.Linear(model.config.hidden_size, 3)
    head.load_state_dict(classifier.head.state_dict())
    hidden = local_hidden(reference, prefix, layer_outputs(reference, IDS)[0], deep.unsqueeze(1).expand(-1, 3, -1, -1))
    last = final_norm(reference)(hidden[torch.arange(3), LENGTHS - 1])
    torch.nn.functional.cross_entropy(head(last), labels).backward()
    for got, want in [(tuning.prefix, prefix), (tuning.deep, deep), (classifier.head.weight, head.weight)]:
        assert_close(got.grad, want.grad)


def test_gradients_through_the_swarm_equal_one_process(model: DistributedCausalLM, checkpoint: Path) -> None:
    reference = load_reference(checkpoint).requires_grad_(False)
    calls: list[tuple[str, dict]] = []
    remote = model.blocks
    original = remote._call

    async def recording(hop, protocol, tensors, expected, metadata=None):
        calls.append((protocol, dict(metadata or {})))
        return await original(hop, protocol, tensors, expected, metadata)

    remote._call = recording
    try:
        assert_gradients_equal_local(model, reference)
    finally:
        del remote._call
    # second opinions of spot-checks (engine/client/spot_check.py) keep nothing and name no kept forward
    forwards = {meta["keep"] for method, meta in calls if method == wire.FORWARD_PROTOCOL and "keep" in meta}
    backwards = [meta["keep"] for method, meta in calls if method == wire.BACKWARD_PROTOCOL and "keep" in meta]
    # every backward names a forward the server kept (so it need not recompute), chunk by chunk
    assert backwards and set(backwards) <= forwards
    assert any(not keep.endswith(".0") for keep in forwards)  # batches were split into chunks of rows


@pytest.mark.parametrize("family", [family for family in supported_model_types() if family != "llama"])
def test_gradients_equal_one_process_for_every_family(local_swarm, tmp_path: Path, family: str) -> None:
    checkpoint = make_lively_checkpoint(tmp_path / family, family)
    swarm = local_swarm(checkpoint, [(0, 2), (2, 4)])
    client = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
    try:
        assert_gradients_equal_local(client, load_reference(checkpoint).requires_grad_(False))
    finally:
        client.close()


def test_training_through_the_swarm_lowers_the_loss(model: DistributedCausalLM) -> None:
    answer = [9, 31, 4, 77, 18, 56]
    examples = [
        Example([first, second, *answer], [IGNORE_INDEX] * 2 + answer, line)
        for line, (first, second) in enumerate([(3, 4), (11, 12), (70, 2), (99, 100)], start=1)
    ]
    tuning = DeepPromptTuning(model, prefix_length=4)
    losses = train(tuning, examples, FinetuneSettings(steps=30, lr=0.03, batch_size=2))
    assert losses[-1] < 0.3 * losses[0], losses


def test_generation_with_trained_prompts_follows_the_forward_pass(model: DistributedCausalLM) -> None:
    tuning = randomized(DeepPromptTuning(model, prefix_length=3, seed=4), seed=4)
    prompt = IDS[0].tolist()
    result = generate(tuning, prompt, GenerationSettings(max_new_tokens=6), stop_token_ids=set())
    with torch.no_grad():
        logits = tuning(torch.tensor([prompt + result.tokens]))
    assert result.tokens == logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()


def test_lora_adapter_by_name_equals_peft(model: DistributedCausalLM, swarm: LocalSwarm, checkpoint, adapter) -> None:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(load_reference(checkpoint), adapter).eval()
    with torch.no_grad():
        expected = peft_model(IDS).logits
        with peft_model.disable_adapter():
            base = peft_model(IDS).logits
        adapted = model(IDS, adapter=ADAPTER)
        holders = set(peer_ids(swarm)[:2])
        assert {hop.peer_id for hop in model.blocks.last_route} <= holders
        assert_close(adapted, expected)
        assert_close(model(IDS), base)
        assert (expected - base).abs().max() > 0.1  # the adapter matters

        # a generation session picks the adapter too, and its servers apply it to every step
        with model.inference_session(max_length=16, batch_size=3, adapter=ADAPTER) as session:
            first = session.step(model.embed(IDS[:, :4]))
            rest = session.step(model.embed(IDS[:, 4:]))
            assert {hop.peer_id for hop in session.route} <= holders
        assert_close(model.logits(torch.cat([first, rest], dim=1)), expected)

    with pytest.raises(MissingBlocksError, match="serves adapter 'absent'"):
        model(IDS, adapter="absent")


def test_a_server_killed_mid_step_changes_no_gradient(local_swarm, checkpoint: Path) -> None:
    """Depends on the client's forward/backward failover (engine/client/remote.py)."""
    swarm = local_swarm(checkpoint, [(0, 2), (2, 4), (2, 4), (2, 4)])
    peers = {peer: index for index, peer in enumerate(peer_ids(swarm))}
    client = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
    try:
        tuning = randomized(DeepPromptTuning(client, prefix_length=3, seed=5))
        expected = swarm_step(tuning)

        # killed between the forward and the backward: the backward goes to a replica
        tuning.zero_grad()
        embeds = client.embed(IDS).detach().requires_grad_(True)
        loss = tuning.loss(None, LABELS, inputs_embeds=embeds)
        used = next(hop.peer_id for hop in client.blocks.last_route if hop.start == 2)
        swarm.kill(peers[used])
        loss.backward()
        got = {"loss": loss.detach(), "prefix": tuning.prefix.grad, "inputs": embeds.grad, "deep": tuning.deep.grad}
        for name, want in expected.items():
            assert_close(got[name], want)

        # killed before the forward reaches it: the forward goes to a replica
        victim = next(peer for peer, index in peers.items() if index > 0 and peer != used)
        client.swarm.router.rng = PreferPeer(victim)
        swarm.kill(peers[victim])
        tuning.zero_grad()
        for name, want in swarm_step(tuning).items():
            assert_close(want, expected[name])
        assert all(hop.peer_id not in (used, victim) for hop in client.blocks.last_route)
    finally:
        client.close()


def make_chat_checkpoint(path: Path) -> Path:
    """A tiny random Llama with the embedded model's tokenizer and chat template (49152 tokens, width 32)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.weights import resolve_model

    tokenizer = resolve_model("smollm2-135m").tokenizer()
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_finetune_and_generate_commands(local_swarm, tmp_path: Path) -> None:
    checkpoint = make_chat_checkpoint(tmp_path / "chat")
    data = tmp_path / "data.jsonl"
    lines = [{"prompt": f"What is {n} plus {n}?", "completion": f"{2 * n}."} for n in range(6)]
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    swarm = local_swarm(checkpoint, [(0, 1), (1, 2)])
    peers = ["--initial-peers", *swarm.initial_peers]
    out = tmp_path / "prompts.safetensors"

    done = run_nectar(
        "finetune",
        str(checkpoint),
        *peers,
        "--data",
        str(data),
        "--method",
        "ptune",
        "--steps",
        "4",
        "--out",
        str(out),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "4/4" in done.stderr and "loss" in done.stderr and f"saved the trained prompts to {out}" in done.stderr

    done = run_nectar(
        "generate",
        str(checkpoint),
        *peers,
        "--prompt",
        "What is 2 plus 2?",
        "--prompts",
        str(out),
        "--max-new-tokens",
        "5",
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    client = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
    try:
        tuned = load_trained(out, client)
        assert type(tuned) is PromptTuning and tuned.prefix_length == 16
        from engine.client.generation import chat_prompt

        tokenizer = client.source.tokenizer()
        ids = chat_prompt(tokenizer, "What is 2 plus 2?")
        expected = generate(tuned, ids, GenerationSettings(max_new_tokens=5), tokenizer)
    finally:
        client.close()
    assert done.stdout.strip() == expected.text.strip()
