"""OpenAI requests in the engine's terms, without a swarm: defaults, refusals naming their field, the context
limit, and OpenAI's frequency and presence penalties (generated tokens only)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from agent.chat.generation_types import ChatError
from agent.chat.openai_types import ChatCompletionRequest, CompletionRequest, UnsupportedFeature
from agent.chat.translate import engine_settings, from_chat, from_completion
from engine.client.generation import GenerationSettings, OccurrencePenalty

CONFIG = SimpleNamespace(max_position_embeddings=100, vocab_size=50)


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_openai_defaults_and_names() -> None:
    request = from_chat(chat(max_tokens=7, max_completion_tokens=9, stop="END"))
    assert request.temperature == 1.0 and request.top_p == 1.0  # OpenAI's defaults
    assert request.max_tokens == 9 and request.stop == ["END"]  # max_completion_tokens wins
    developer = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    )
    assert from_chat(developer).messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    greedy = engine_settings(from_chat(chat(temperature=0, seed=3)), CONFIG, 10, 512)
    assert not greedy.do_sample and greedy.seed == 3 and greedy.max_new_tokens == 90  # cut to the context left
    sampled = engine_settings(from_chat(chat(temperature=0.5, top_p=0.9, repetition_penalty=1.3)), CONFIG, 10, 20)
    assert sampled.do_sample and sampled.temperature == 0.5 and sampled.max_new_tokens == 20
    assert sampled.repetition_penalty == 1.3 and sampled.top_p == 0.9


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages.0.content.0"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages.0"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_unsupported_features_name_their_field(fields: dict, param: str) -> None:
    with pytest.raises(UnsupportedFeature) as refused:
        from_chat(chat(**fields))
    assert refused.value.param == param and "\n" not in str(refused.value)


def test_completion_prompts_and_limits() -> None:
    ids = from_completion(CompletionRequest(model="m", prompt=[1, 2, 3]))
    assert ids.prompt == [1, 2, 3] and ids.messages is None
    assert from_completion(CompletionRequest(model="m", prompt=["one"])).prompt == "one"
    with pytest.raises(ChatError, match="empty"):
        from_completion(CompletionRequest(model="m", prompt=""))
    with pytest.raises(UnsupportedFeature, match="best_of"):
        from_completion(CompletionRequest(model="m", prompt="x", best_of=2))
    with pytest.raises(ChatError, match="context holds 100") as full:
        engine_settings(ids, CONFIG, 100, 16)
    assert full.value.status == 400 and full.value.code == "context_length_exceeded"
    with pytest.raises(ChatError, match=r"token ids must be in \[0, 50\)"):
        engine_settings(from_completion(CompletionRequest(model="m", prompt=[1, 99])), CONFIG, 2, 16)


def test_frequency_and_presence_penalties_count_generated_tokens_only() -> None:
    prompt, generated = [7, 7, 3], [3, 3, 5]
    ids = torch.tensor([prompt + generated])
    scores = OccurrencePenalty(len(prompt), frequency=0.5, presence=0.25)(ids, torch.zeros(1, 10))
    expected = torch.zeros(1, 10)
    expected[0, 3] = -(2 * 0.5 + 0.25)
    expected[0, 5] = -(0.5 + 0.25)
    assert torch.equal(scores, expected)  # token 7 appears only in the prompt: untouched
    assert OccurrencePenalty(6, 1.0, 1.0)(ids, torch.ones(1, 10)).eq(1).all()  # nothing generated yet
    with pytest.raises(ValueError, match="frequency penalty must be between -2 and 2"):
        GenerationSettings(frequency_penalty=3).validate()
