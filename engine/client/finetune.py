"""Fine-tuning data, the training loop, and the file that holds what was trained.

Data is JSON Lines, one example per line, in either form (both may appear in one file; blank lines are skipped):

- ``{"prompt": "...", "completion": "..."}``: one chat turn. The prompt goes through the model's chat template
  as the user's message, exactly as ``nectar generate`` sends it; the completion is the assistant's answer.
  The loss covers the completion and its end-of-turn token only, so the model learns to answer, not to ask.
- ``{"text": "..."}``: plain text, no template; the loss covers every token.

Bad data fails before training starts, with the file and line: invalid JSON, a missing or empty field, a line
longer than ``max_length`` tokens, or an empty file.

Trained parameters are saved as safetensors (``prefix``, ``deep``, ``head.*``) with metadata naming the method,
the model, the prefix length and the adapter, so ``load_trained`` rebuilds the same module on a fresh client.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.client.generation import chat_prompt
from engine.client.ptune import IGNORE_INDEX, DeepPromptTuning, PromptTuning, SequenceClassifier

METHODS: dict[str, type[PromptTuning]] = {"ptune": PromptTuning, "deep_ptune": DeepPromptTuning}
FILE_FORMAT = "nectar-prompts/1"


class DataError(ValueError):
    """The training data is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One tokenized example; ``labels`` is ``IGNORE_INDEX`` where the loss does not look."""

    input_ids: list[int]
    labels: list[int]
    line: int


@dataclass
class FinetuneSettings:
    """Knobs of ``nectar finetune`` (the CLI is derived from these fields)."""

    method: str = field(default="deep_ptune", metadata={"help": "ptune or deep_ptune"})
    steps: int = field(default=100, metadata={"help": "optimizer steps"})
    lr: float = field(default=1e-2, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=4, metadata={"help": "examples per step"})
    prefix_length: int = field(default=16, metadata={"help": "trainable prefix tokens"})
    max_length: int = field(default=256, metadata={"help": "longest example in tokens (a longer line is an error)"})
    seed: int = field(default=0, metadata={"help": "seed of the prefix initialization and data order"})
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter the servers apply (None: the base model)"}
    )

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in ("steps", "batch_size", "prefix_length", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")


@dataclass(frozen=True)
class Progress:
    """Reported after every step. ``tokens_per_second`` counts input tokens (no padding) of this step."""

    step: int
    steps: int
    loss: float
    tokens_per_second: float
    seconds: float  # since training began


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line; any malformed line is a ``DataError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        fields = ("prompt", "completion") if "prompt" in record or "completion" in record else ("text",)
        for name in fields:
            if name not in record:
                raise DataError(
                    f'{path}:{number}: missing field {name!r} (an example has "prompt" and "completion", '
                    f'or "text"; got {sorted(record) or "no fields"})'
                )
            if not isinstance(record[name], str):
                raise DataError(f"{path}:{number}: field {name!r} must be a string, got {type(record[name]).__name__}")
            if not record[name].strip():
                raise DataError(f"{path}:{number}: field {name!r} is empty")
        records.append((number, record))
    if not records:
        raise DataError(f"{path} holds no examples (the file is empty)")
    return records


def encode_record(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """Token ids and labels of one validated record (see the module docstring for the two forms)."""
    if "text" in record and "prompt" not in record:
        ids = list(tokenizer(record["text"])["input_ids"])
        return ids, list(ids)
    prompt_ids = chat_prompt(tokenizer, record["prompt"])
    completion_ids = _completion_ids(tokenizer, record["prompt"], record["completion"], prompt_ids)
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def _completion_ids(tokenizer, prompt: str, completion: str, prompt_ids: list[int]) -> list[int]:
    """The assistant turn's tokens through its end-of-turn token, as the chat template writes them."""
    eos = tokenizer.eos_token_id
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        full = list(tokenizer.apply_chat_template(turns, return_dict=True)["input_ids"])
        if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            ids = full[len(prompt_ids) :]
            return ids[: ids.index(eos) + 1] if eos in ids else ids  # what follows end-of-turn is never generated
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return ids + ([eos] if eos is not None else [])


def load_examples(path: str | Path, tokenizer, max_length: int) -> list[Example]:
    """Read, validate and tokenize a JSONL file; a line longer than ``max_length`` tokens is a ``DataError``."""
    examples = []
    for number, record in read_records(path):
        ids, labels = encode_record(tokenizer, record)
        if len(ids) > max_length:
            raise DataError(f"{path}:{number}: the example is {len(ids)} tokens, more than the max length {max_length}")
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise DataError(f"{path}:{number}: nothing to learn (a text needs 2 tokens or more, a completion 1)")
        examples.append(Example(ids, labels, number))
    return examples


def collate(examples: Sequence[Example], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, labels); padding is never learned and, being last, never seen by real tokens."""
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
    return ids, labels


def batches(examples: Sequence[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Endless batches, reshuffled each epoch with a seeded order."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for first in range(0, len(order), batch_size):
            yield [examples[index] for index in order[first : first + batch_size]]


def make_tuning(model, settings: FinetuneSettings) -> PromptTuning:
    settings.validate()
    return METHODS[settings.method](model, settings.prefix_length, adapter=settings.adapter, seed=settings.seed)


def train(
    tuning: PromptTuning,
    examples: Sequence[Example],
    settings: FinetuneSettings,
    on_progress: Callable[[Progress], None] | None = None,
    pad_id: int = 0,
) -> list[float]:
    """Train ``tuning``'s parameters with AdamW for ``settings.steps`` steps; returns the loss of every step."""
    settings.validate()
    if not examples:
        raise DataError("no training examples")
    optimizer = torch.optim.AdamW(tuning.trainable_parameters(), lr=settings.lr, weight_decay=0.0)
    losses: list[float] = []
    began = time.perf_counter()
    stream = batches(examples, settings.batch_size, settings.seed)
    for step in range(1, settings.steps + 1):
        batch = next(stream)
        input_ids, labels = collate(batch, pad_id)
        step_began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = tuning.loss(input_ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuning.trainable_parameters(), 1.0)  # one bad batch must not wreck the prompts
        optimizer.step()
        losses.append(loss.item())
        if on_progress is not None:
            tokens = sum(len(example.input_ids) for example in batch)
            seconds = time.perf_counter() - step_began
            on_progress(Progress(step, settings.steps, losses[-1], tokens / seconds, time.perf_counter() - began))
    return losses


def save_trained(path: str | Path, module: PromptTuning | SequenceClassifier, model_name: str) -> Path:
    """Write the trained tensors and what is needed to rebuild the module around them."""
    tuning = module.tuning if isinstance(module, SequenceClassifier) else module
    metadata = {
        "format": FILE_FORMAT,
        "method": tuning.method,
        "model": model_name,
        "prefix_length": str(tuning.prefix_length),
        "hidden_size": str(tuning.config.hidden_size),
        "num_blocks": str(tuning.num_blocks),
        "adapter": tuning.adapter or "",
    }
    if isinstance(module, SequenceClassifier):
        metadata["num_labels"] = str(module.num_labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in module.trained_tensors().items()}
    save_file(tensors, path, metadata=metadata)
    return path


def read_trained(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no trained prompts file at {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path} is not a safetensors file: {error}") from None
    if metadata.get("format") != FILE_FORMAT or metadata.get("method") not in METHODS:
        raise ValueError(f"{path} does not hold prompts trained by nectar finetune")
    return tensors, metadata


def load_trained(path: str | Path, model) -> PromptTuning | SequenceClassifier:
    """Rebuild the trained module of ``path`` around ``model``; refuses prompts trained for another model shape."""
    tensors, metadata = read_trained(path)
    hidden, blocks = int(metadata["hidden_size"]), int(metadata["num_blocks"])
    if (hidden, blocks) != (model.config.hidden_size, model.num_blocks):
        raise ValueError(
            f"{path} was trained for {metadata['model']} ({blocks} blocks of width {hidden}); this model has "
            f"{model.num_blocks} blocks of width {model.config.hidden_size}"
        )
    tuning = METHODS[metadata["method"]](model, int(metadata["prefix_length"]), adapter=metadata["adapter"] or None)
    module: PromptTuning | SequenceClassifier = tuning
    if "num_labels" in metadata:
        module = SequenceClassifier(tuning, int(metadata["num_labels"]))
    expected = set(module.trained_tensors())
    if set(tensors) != expected:
        raise ValueError(f"{path} holds tensors {sorted(tensors)}, expected {sorted(expected)}")
    module.load_trained_tensors(tensors)
    return module


def finetune_file(
    model_name: str,
    initial_peers: list[str],
    data: str | Path,
    settings: FinetuneSettings,
    out: str | Path,
    dht_prefix: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    swarm_key: str | None = None,
) -> tuple[Path, list[float]]:
    """``nectar finetune``: check the data, join the swarm (private with the key file ``swarm_key``), train, save;
    returns the saved file and the losses.

    The data is read and tokenized before joining the swarm, so a bad file fails at once.
    """
    from engine.client.config import ClientSettings
    from engine.client.model import DistributedCausalLM
    from engine.weights import resolve_model

    settings.validate()
    tokenizer = resolve_model(model_name).tokenizer()
    examples = load_examples(data, tokenizer, settings.max_length)
    model = DistributedCausalLM.connect(
        model_name, initial_peers, dht_prefix, settings=ClientSettings(swarm_key=swarm_key)
    )
    try:
        tuning = make_tuning(model, settings)
        losses = train(tuning, examples, settings, on_progress, pad_id=pad_token_id(tokenizer))
        return save_trained(out, tuning, model_name), losses
    finally:
        model.close()


def pad_token_id(tokenizer) -> int:
    """Any id serves as padding (its positions are never learned nor attended to by real tokens)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
