"""OpenAI requests in the engine's terms: ``GenerationRequest`` from a request body, then prompt token ids and
``GenerationSettings`` once the model (its tokenizer and context length) is loaded.

OpenAI's meanings are kept: ``temperature`` 0 is greedy and its default is 1; ``max_completion_tokens`` wins
over ``max_tokens``; the answer is cut to what the model's context leaves after the prompt.
The engine is imported inside the functions that need it (they run on a job's thread, after the model loaded).
"""

from __future__ import annotations

from typing import Any

from agent.chat.generation_types import ChatError, GenerationRequest
from agent.chat.openai_types import ChatCompletionRequest, CompletionRequest


def from_chat(body: ChatCompletionRequest) -> GenerationRequest:
    return _request(body, messages=body.chat(), prompt=None)


def from_completion(body: CompletionRequest) -> GenerationRequest:
    body.check_supported()
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not prompt:
        raise ChatError(400, "prompt: the prompt is empty", param="prompt")
    return _request(body, messages=None, prompt=prompt)


def _request(body: ChatCompletionRequest | CompletionRequest, **what: Any) -> GenerationRequest:
    return GenerationRequest(
        **what,
        max_tokens=body.answer_limit(),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        repetition_penalty=body.repetition_penalty or 1.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        stop=body.stop_strings(),
        seed=body.seed,
    )


def prompt_ids(request: GenerationRequest, tokenizer: Any) -> list[int]:
    """The prompt's token ids: the chat through the model's template, the text, or the ids as given."""
    from engine.client.generation import messages_prompt

    if isinstance(request.prompt, list):
        return list(request.prompt)
    if tokenizer is None:
        raise ChatError(400, "this model has no tokenizer: send token ids as the prompt of /v1/completions")
    if request.messages is not None:
        try:
            return messages_prompt(tokenizer, request.messages)
        except Exception as error:  # the template's own check (e.g. roles that must alternate), told as it is
            raise ChatError(
                400, f"messages: the model's chat template refused them: {error}", param="messages"
            ) from None
    return list(tokenizer(request.prompt)["input_ids"])


def engine_settings(request: GenerationRequest, config: Any, prompt_length: int, default_max_tokens: int):
    """``GenerationSettings`` for the request; the answer length is cut to the context the prompt leaves."""
    from engine.client.generation import GenerationSettings

    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    room = context - prompt_length if context else None
    if room is not None and room < 1:
        raise ChatError(
            400,
            f"the prompt has {prompt_length} tokens; the model's context holds {context}",
            param="messages" if request.messages is not None else "prompt",
            code="context_length_exceeded",
        )
    wanted = request.max_tokens or default_max_tokens
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if isinstance(request.prompt, list) and vocab and any(not 0 <= token < vocab for token in request.prompt):
        raise ChatError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
    settings = GenerationSettings(
        max_new_tokens=min(wanted, room) if room is not None else wanted,
        do_sample=request.temperature > 0,
        temperature=request.temperature or 1.0,
        top_k=request.top_k,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        stop_strings=tuple(request.stop),
        seed=request.seed,
    )
    settings.validate()
    return settings
