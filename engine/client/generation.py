"""Text generation through an inference session: sampling, stop strings, streaming and chat prompts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.client.model import DistributedCausalLM
from engine.client.speculative import Draft, Drafter, NgramDrafter, accept, processed_scores
from engine.hf.sampling import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

MAX_DRAFT_TOKENS = 32


@dataclass
class GenerationSettings:
    """How to pick each next token; greedy unless ``do_sample``. The CLI's generation options are derived from
    these fields (their ``help``), so the command line and the library cannot disagree on a default."""

    max_new_tokens: int = field(default=64, metadata={"help": "most new tokens to generate"})
    do_sample: bool = field(
        default=False, metadata={"help": "sample the next token (with the options below) instead of the most likely"}
    )
    temperature: float = field(default=1.0, metadata={"help": "with --do-sample: sampling temperature (> 0)"})
    top_k: int = field(default=0, metadata={"help": "with --do-sample: keep the k most likely tokens (0: all)"})
    top_p: float = field(
        default=1.0, metadata={"help": "with --do-sample: keep the most likely tokens up to this probability mass"}
    )
    repetition_penalty: float = field(default=1.0, metadata={"help": "penalty on tokens already present (1: none)"})
    frequency_penalty: float = field(
        default=0.0,
        metadata={"help": "OpenAI's: subtracted from a token's logit once per time it was generated (-2 to 2)"},
    )
    presence_penalty: float = field(
        default=0.0, metadata={"help": "OpenAI's: subtracted once from every token generated at least once (-2 to 2)"}
    )
    stop_strings: list[str] = field(default_factory=list, metadata={"help": "stop when the text contains one of these"})
    seed: int | None = field(default=None, metadata={"help": "random seed of sampling (default: unseeded)"})
    draft_tokens: int = field(
        default=4,
        metadata={
            "help": "speculative decoding: most tokens proposed per step (from text seen before, or a draft model) "
            "and checked in one trip along the chain; the output is the same (0: off)"
        },
    )

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
        if not 0 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft tokens must be between 0 and {MAX_DRAFT_TOKENS}, got {self.draft_tokens}")
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
    steps: int = 0  # trips along the chain (with speculative decoding, one step may yield several tokens)
    drafted: int = 0  # tokens proposed by speculative decoding
    accepted: int = 0  # proposed tokens the model agreed with

    @property
    def tokens_per_step(self) -> float:
        return len(self.tokens) / self.steps if self.steps else 0.0

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
    drafter: Drafter | None = None,
) -> GenerationResult:
    """Generate after ``input_ids`` through the swarm; ``on_text`` receives each new piece of text.

    ``model`` may also be a prompt-tuned module (``engine.client.ptune``); ``adapter`` names a LoRA adapter.
    ``should_stop`` is asked before every step: True ends the generation there (its session closes at once,
    so the servers free its caches), e.g. when the reader of a stream went away. With ``settings.draft_tokens``,
    each step also checks tokens proposed by ``drafter`` (default: n-gram lookup in the text so far); see
    ``engine.client.speculative``.
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
    steps = drafted = accepted = 0
    max_length = len(input_ids) + settings.max_new_tokens
    session_options = {} if adapter is None else {"adapter": adapter}
    with torch.inference_mode(), model.inference_session(max_length=max_length, **session_options) as session:
        if settings.draft_tokens and drafter is None and hasattr(session, "rollback"):
            drafter = NgramDrafter()
        proposal = _ProposalLength(settings.draft_tokens if hasattr(session, "rollback") else 0)
        step_input = sequence
        while len(new_tokens) < settings.max_new_tokens:
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            room = settings.max_new_tokens - len(new_tokens) - 1  # the step's own token comes on top of a draft
            draft = Draft([])
            if drafter is not None and min(room, proposal.length) > 0:
                draft = drafter.propose(sequence[0].tolist(), min(room, proposal.length), settings.do_sample, generator)
            fed = torch.cat([step_input, torch.tensor([draft.tokens], dtype=torch.long)], dim=1)
            hidden = session.step(model.embed(fed))
            steps += 1
            logits = model.logits(hidden[0, -len(draft.tokens) - 1 :])
            scores = processed_scores(processors, sequence, draft, logits)
            tokens, kept = accept(scores, draft, settings.do_sample, generator)
            if draft.tokens:
                drafted, accepted = drafted + len(draft.tokens), accepted + kept
                proposal.update(len(draft.tokens), kept)
                if kept < len(draft.tokens):
                    session.rollback(session.position - (len(draft.tokens) - kept))
            if not new_tokens:
                first_token_at = time.perf_counter() - began
            for token_id in tokens:
                new_tokens.append(token_id)
                sequence = torch.cat([sequence, torch.tensor([[token_id]])], dim=1)
                if token_id in stops:
                    reason = "eos"
                    break
                if streamer.push(new_tokens):
                    reason = "stop_string"
                    break
            if reason != "length":
                break
            step_input = sequence[:, -1:]
        route = [f"{hop.start}:{hop.end}@{hop.peer_id[-8:]}" for hop in session.route]
    return GenerationResult(
        new_tokens,
        streamer.finish(new_tokens),
        reason,
        first_token_at,
        time.perf_counter() - began,
        route,
        steps,
        drafted,
        accepted,
    )


class _ProposalLength:
    """How many tokens to propose: grows while every proposal is accepted, halves when none is, so a drafter
    that guesses badly costs little compute and one that guesses well gets to propose more."""

    def __init__(self, limit: int):
        self.limit = self.length = limit

    def update(self, proposed: int, kept: int) -> None:
        if kept == proposed:
            self.length = min(self.limit, self.length + 1)
        elif kept == 0:
            self.length = max(1, self.length // 2)


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
