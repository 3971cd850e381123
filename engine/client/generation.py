"""Text generation through an inference session: sampling, stop strings, streaming and chat prompts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.client.model import DistributedCausalLM
from engine.hf.sampling import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class GenerationSettings:
    """How to pick each next token. Greedy unless ``do_sample``."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    repetition_penalty: float = 1.0  # 1.0: none
    frequency_penalty: float = 0.0  # OpenAI's: subtracted from a token's logit once per time it was generated
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token generated at least once
    stop_strings: Sequence[str] = field(default_factory=tuple)
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition penalty must be positive, got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name.replace('_', ' ')} must be between -2 and 2, got {getattr(self, name)}")

    def processors(self, prompt_length: int = 0) -> LogitsProcessorList:
        """The logits processors, in transformers' order; ``prompt_length`` keeps the prompt out of OpenAI's
        penalties (they count generated tokens only)."""
        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.frequency_penalty or self.presence_penalty:
            processors.append(OccurrencePenalty(prompt_length, self.frequency_penalty, self.presence_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors


class OccurrencePenalty:
    """OpenAI's frequency and presence penalties over the tokens generated after ``prompt_length``."""

    def __init__(self, prompt_length: int, frequency: float, presence: float):
        self.prompt_length, self.frequency, self.presence = prompt_length, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens only
    text: str  # their text, cut at a stop string if one appeared
    stop_reason: str  # "eos", "stop_string", "length" or "cancelled" (``should_stop`` said so)
    time_to_first_token: float  # seconds from the call to the first new token
    seconds: float  # seconds for the whole call
    route: list[str]  # "start:end@peer" of each server used

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed after the first token (the prompt's prefill excluded)."""
        decode = self.seconds - self.time_to_first_token
        return (len(self.tokens) - 1) / decode if len(self.tokens) > 1 and decode > 0 else 0.0


def chat_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as one user turn, through the model's chat template when it has one."""
    return messages_prompt(tokenizer, [{"role": "user", "content": text}])


def messages_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat (``[{"role", "content"}]``) ready for the assistant's answer, through the model's chat
    template; without a template, "role: content" lines (a single user turn is its bare text)."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])
    if len(messages) == 1 and messages[0]["role"] == "user":
        return list(tokenizer(messages[0]["content"])["input_ids"])
    text = "".join(f"{message['role']}: {message['content']}\n" for message in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])


def eos_ids(model: DistributedCausalLM, tokenizer) -> set[int]:
    ids = getattr(model.config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate(
    model: DistributedCausalLM,
    input_ids: Sequence[int],
    settings: GenerationSettings,
    tokenizer=None,
    on_text: Callable[[str], None] | None = None,
    stop_token_ids: set[int] | None = None,
    adapter: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Generate after ``input_ids`` through the swarm; ``on_text`` receives each new piece of text.

    ``model`` may also be a prompt-tuned module (``engine.client.ptune``); ``adapter`` names a LoRA adapter.
    ``should_stop`` is asked before every step: True ends the generation there (its session closes at once,
    so the servers free its caches), e.g. when the reader of a stream went away.
    """
    settings.validate()
    if not input_ids:
        raise ValueError("the prompt is empty")
    if settings.stop_strings and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    stops = eos_ids(model, tokenizer) if stop_token_ids is None else stop_token_ids
    generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
    processors = settings.processors(len(input_ids))
    began = time.perf_counter()
    sequence = torch.tensor([list(input_ids)], dtype=torch.long)
    new_tokens: list[int] = []
    streamer = _TextStreamer(tokenizer, settings.stop_strings, on_text)
    first_token_at, reason = 0.0, "length"
    max_length = len(input_ids) + settings.max_new_tokens
    session_options = {} if adapter is None else {"adapter": adapter}
    with torch.inference_mode(), model.inference_session(max_length=max_length, **session_options) as session:
        step_input = sequence
        for _ in range(settings.max_new_tokens):
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            hidden = session.step(model.embed(step_input))
            scores = processors(sequence, model.logits(hidden[:, -1]).float())
            if settings.do_sample:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            if not new_tokens:
                first_token_at = time.perf_counter() - began
            token_id = int(token)
            new_tokens.append(token_id)
            sequence = torch.cat([sequence, token], dim=1)
            step_input = token
            if token_id in stops:
                reason = "eos"
                break
            if streamer.push(new_tokens):
                reason = "stop_string"
                break
        route = [f"{hop.start}:{hop.end}@{hop.peer_id[-8:]}" for hop in session.route]
    return GenerationResult(
        new_tokens, streamer.finish(new_tokens), reason, first_token_at, time.perf_counter() - began, route
    )


class _TextStreamer:
    """Turns the growing token list into text pieces, holding back what could be the start of a stop string."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], on_text: Callable[[str], None] | None):
        self.tokenizer, self.stop_strings, self.on_text = tokenizer, [s for s in stop_strings if s], on_text
        self.sent = 0  # characters already handed to on_text
        self.text = ""

    def push(self, tokens: list[int]) -> bool:
        """Returns True when a stop string appeared."""
        if self.tokenizer is None:
            return False
        self.text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in self.stop_strings:
            cut = self.text.find(stop)
            if cut >= 0:
                self.text = self.text[:cut]
                self._emit(len(self.text))
                return True
        hold = max((len(stop) - 1 for stop in self.stop_strings), default=0)
        safe = len(self.text) - hold
        if self.text.endswith("\ufffd"):  # an unfinished multi-byte character
            safe = min(safe, len(self.text) - 1)
        self._emit(safe)
        return False

    def _emit(self, upto: int) -> None:
        if upto > self.sent and self.on_text is not None:
            self.on_text(self.text[self.sent : upto])
        self.sent = max(self.sent, upto)

    def finish(self, tokens: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        self._emit(len(self.text))
        return self.text
