"""``engine.client.generation``: sampling settings, stop strings, streaming and seeds, without a swarm.

``generate`` runs here on ``LocalCausalLM``: the real client-side model (embeddings, norm, head) whose inference
session runs a local span of all blocks instead of servers. The swarm itself is exercised, never mocked, by
``test_swarm_generation.py``; these tests pin down the generation loop around it.
"""

from __future__ import annotations

import pytest
import torch

from engine.client.generation import GenerationResult, GenerationSettings, _TextStreamer, chat_prompt, eos_ids, generate
from engine.client.local import LocalCausalLM
from engine.models.span import BlockSpan
from engine.weights import ModelSource, resolve_model

PROMPT = "Write three sentences about the sea."


class LocalSession:
    """The part of ``InferenceSession`` that ``generate`` uses, over a local span with its own cache."""

    route: list = []

    def __init__(self, span: BlockSpan, max_length: int, batch_size: int):
        self.span, self.position = span, 0
        self.cache = span.new_cache(span.start, span.end, batch_size, max_length)

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        output = self.span(hidden, self.position, self.cache)
        self.position += hidden.shape[1]
        return output

    def rollback(self, length: int) -> None:
        self.position = length  # the next step's position rolls the span's cache back

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cache = None


class LocalGenerationLM(LocalCausalLM):
    """The engine's in-process model, with an inference session over its local span (no swarm)."""

    def inference_session(self, max_length: int, batch_size: int = 1, step_timeout: float = 60.0) -> LocalSession:
        return LocalSession(self.blocks.span, max_length, batch_size)


@pytest.fixture(scope="module")
def source() -> ModelSource:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def model(source: ModelSource) -> LocalGenerationLM:
    return LocalGenerationLM(source)


@pytest.fixture(scope="module")
def tokenizer(source: ModelSource):
    return source.tokenizer()


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> list[int]:
    return chat_prompt(tokenizer, PROMPT)


@pytest.fixture(scope="module")
def greedy(model, tokenizer, prompt_ids) -> GenerationResult:
    return generate(model, prompt_ids, GenerationSettings(max_new_tokens=24), tokenizer)


def test_greedy_loop_matches_transformers(source: ModelSource, prompt_ids: list[int], greedy) -> None:
    from reference import greedy_reference, load_reference

    assert greedy.stop_reason == "length" and len(greedy.tokens) == 24
    assert greedy.tokens == greedy_reference(load_reference(source.path), prompt_ids, 24)


def test_chat_prompt_uses_the_template(tokenizer, prompt_ids: list[int]) -> None:
    text = tokenizer.decode(prompt_ids)
    assert text.startswith("<|im_start|>") and PROMPT in text and text.rstrip().endswith("<|im_start|>assistant")
    plain = type("Plain", (), {"chat_template": None, "__call__": lambda self, text: tokenizer(text)})()
    assert chat_prompt(plain, PROMPT) == tokenizer(PROMPT)["input_ids"]


def test_end_of_sequence_ids_come_from_config_and_tokenizer(model, tokenizer) -> None:
    assert tokenizer.eos_token_id in eos_ids(model, tokenizer)
    assert eos_ids(model, None) <= eos_ids(model, tokenizer)


def test_streamed_pieces_concatenate_to_the_final_text(model, tokenizer, prompt_ids, greedy) -> None:
    pieces: list[str] = []
    result = generate(model, prompt_ids, GenerationSettings(max_new_tokens=24), tokenizer, on_text=pieces.append)
    assert len(pieces) > 3 and all(pieces)
    assert "".join(pieces) == result.text == greedy.text == tokenizer.decode(greedy.tokens, skip_special_tokens=True)


def test_stop_string_cuts_the_text_and_ends_generation(model, tokenizer, prompt_ids, greedy) -> None:
    words = greedy.text.split()
    stop = words[len(words) // 2]  # a word from the middle of the greedy answer
    cut = greedy.text.find(stop)
    pieces: list[str] = []
    settings = GenerationSettings(max_new_tokens=24, stop_strings=("@@never@@", stop))
    result = generate(model, prompt_ids, settings, tokenizer, on_text=pieces.append)
    assert result.stop_reason == "stop_string"
    assert result.text == greedy.text[:cut]
    assert "".join(pieces) == result.text and stop not in "".join(pieces)
    assert len(result.tokens) < len(greedy.tokens) and result.tokens == greedy.tokens[: len(result.tokens)]


def test_stop_token_ends_generation_and_is_kept(model, prompt_ids, greedy) -> None:
    stop = greedy.tokens[5]
    result = generate(model, prompt_ids, GenerationSettings(max_new_tokens=24), stop_token_ids={stop})
    assert result.stop_reason == "eos"
    assert result.tokens == greedy.tokens[: greedy.tokens.index(stop) + 1]
    assert result.text == ""  # no tokenizer, no text


def test_seed_makes_sampling_reproducible(model, prompt_ids) -> None:
    def sample(seed: int) -> list[int]:
        settings = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=50, seed=seed)
        return generate(model, prompt_ids, settings, stop_token_ids=set()).tokens

    first = sample(1)
    assert sample(1) == first
    assert any(sample(seed) != first for seed in (2, 3, 4))


def test_result_timing_fields(greedy) -> None:
    assert 0 < greedy.time_to_first_token <= greedy.seconds
    assert greedy.tokens_per_second > 0 and greedy.route == []
    single = GenerationResult([1], "", "length", 0.5, 0.5, [])
    assert single.tokens_per_second == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_new_tokens": 0}, "max new tokens must be at least 1, got 0"),
        ({"temperature": 0.0}, "temperature must be positive, got 0.0"),
        ({"temperature": -1.0}, "temperature must be positive"),
        ({"top_k": -1}, "top-k must be 0 \\(off\\) or positive, got -1"),
        ({"top_p": 0.0}, "top-p must be in \\(0, 1\\], got 0.0"),
        ({"top_p": 1.5}, "top-p must be in \\(0, 1\\], got 1.5"),
        ({"repetition_penalty": 0.0}, "repetition penalty must be positive, got 0.0"),
    ],
    ids=["no-tokens", "zero-temperature", "negative-temperature", "top-k", "top-p-zero", "top-p-above-one", "penalty"],
)
def test_invalid_settings_are_refused_before_any_work(change: dict, message: str) -> None:
    settings = GenerationSettings(**change)
    with pytest.raises(ValueError, match=message):
        settings.validate()
    with pytest.raises(ValueError, match=message):
        generate(None, [1, 2, 3], settings)  # type: ignore[arg-type]  # refused before the model is touched


def test_empty_prompt_and_stop_strings_without_tokenizer_are_refused() -> None:
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(None, [], GenerationSettings())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        generate(None, [1], GenerationSettings(stop_strings=("x",)))  # type: ignore[arg-type]


def test_processors_follow_the_settings() -> None:
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper

    assert len(GenerationSettings(temperature=0.5, top_k=5, top_p=0.5).processors()) == 0  # greedy ignores them
    sampling = GenerationSettings(do_sample=True, temperature=0.5, top_k=5, top_p=0.5).processors()
    assert len(sampling) == 3 and any(isinstance(item, TopKLogitsWarper) for item in sampling)
    penalty = GenerationSettings(repetition_penalty=1.3).processors()
    assert [type(item) for item in penalty] == [RepetitionPenaltyLogitsProcessor]


class PieceTokenizer:
    """Decodes token ``i`` to ``pieces[i]``: a stand-in that shows exactly what the streamer sees."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[token] for token in tokens)


def stream(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], str, bool]:
    sent: list[str] = []
    streamer = _TextStreamer(PieceTokenizer(pieces), stops, sent.append)
    tokens: list[int] = []
    stopped = False
    for token in range(len(pieces)):
        tokens.append(token)
        if streamer.push(tokens):
            stopped = True
            break
    return sent, streamer.finish(tokens), stopped


def test_streamer_holds_back_what_could_start_a_stop_string() -> None:
    sent, text, stopped = stream(["Hello", " wor", "ld", " #", "#", "# tail"], ("###",))
    assert stopped and text == "Hello world " and "".join(sent) == text
    assert all("#" not in piece for piece in sent)


def test_streamer_false_alarm_releases_the_held_text() -> None:
    sent, text, stopped = stream(["a #", "# b", " c"], ("###",))
    assert not stopped and text == "a ## b c" and "".join(sent) == text


def test_streamer_waits_for_a_whole_character() -> None:
    # a multi-byte character split over two tokens decodes to U+FFFD until its last byte arrives
    pieces = ["caf", "\ufffd", "é!"]
    sent: list[str] = []
    streamer = _TextStreamer(PieceTokenizer(pieces), (), sent.append)
    streamer.push([0])
    streamer.push([0, 1])
    assert "".join(sent) == "caf"
    streamer.push([0, 2])
    assert streamer.finish([0, 2]) == "café!" and "".join(sent) == "café!"
