"""The OpenAI-compatible endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``/v1/completions``.

Same server and token as the control API. A request is validated (``openai_types.py``), translated
(``translate.py``) and run as a ``Job`` (``warm.py``). The HTTP answer starts only when the first piece of text
(or the error) is known, so a request the swarm cannot serve gets a proper 4xx/5xx in OpenAI's error shape,
never a stream that breaks. Streams are server-sent events in OpenAI's chunk format ending with ``[DONE]``; a
client that goes away cancels its job, which ends the swarm session before the next token.
Nectar's additions (route, time to first token, tokens/s) are in a ``nectar`` field that OpenAI clients ignore.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agent.chat.generation_types import ChatError, Outcome
from agent.chat.openai_types import ChatCompletionRequest, CompletionRequest, UnsupportedFeature
from agent.chat.translate import from_chat, from_completion
from agent.chat.warm import Job, WarmModel

GRACE_SECONDS = 5.0  # beyond chat.wait_seconds: the job's own wait ends first and says why
DISCONNECT_POLL_SECONDS = 0.5
MODEL_ALIASES = ("default", "nectar")
Kind = Literal["chat", "completion"]


def openai_error(error: ChatError) -> JSONResponse:
    body = {"error": {"message": str(error), "type": error.kind, "param": error.param, "code": error.code}}
    return JSONResponse(body, error.status)


def openai_router(warm: WarmModel) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [await _model_entry(warm)]}

    @router.get("/models/{model_id:path}", response_model=None)
    async def get_model(model_id: str) -> dict[str, Any] | JSONResponse:
        if not _known_model(warm, model_id):
            return openai_error(_unknown_model(warm, model_id))
        return await _model_entry(warm)

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _answer(warm, "chat", body, request)

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _answer(warm, "completion", body, request)

    return router


async def _model_entry(warm: WarmModel) -> dict[str, Any]:
    """The swarm's model and whether every block has a server now (``ready``; None when it cannot be read)."""
    entry: dict[str, Any] = {"id": warm.model_name, "object": "model", "created": 0, "owned_by": "nectar"}
    timeout = warm.settings().chat.wait_seconds
    try:
        missing = await asyncio.wait_for(asyncio.to_thread(warm.missing_blocks, timeout), timeout + GRACE_SECONDS)
    except (ChatError, TimeoutError) as error:
        return {**entry, "ready": None, "missing_blocks": [], "detail": str(error) or "the swarm did not answer"}
    except Exception as error:
        return {**entry, "ready": None, "missing_blocks": [], "detail": f"{type(error).__name__}: {error}"}
    return {**entry, "ready": not missing, "missing_blocks": missing}


def _known_model(warm: WarmModel, name: str) -> bool:
    model = warm.model_name
    return name in (model, Path(model).name, *MODEL_ALIASES)


def _unknown_model(warm: WarmModel, name: str) -> ChatError:
    return ChatError(
        404,
        f"model {name!r} does not exist here; this agent's swarm serves {warm.model_name!r} (see /v1/models)",
        param="model",
        code="model_not_found",
    )


async def _answer(warm: WarmModel, kind: Kind, body: ChatCompletionRequest | CompletionRequest, request: Request):
    try:
        if not _known_model(warm, body.model):
            raise _unknown_model(warm, body.model)
        generation = from_chat(body) if isinstance(body, ChatCompletionRequest) else from_completion(body)
        job = Job(warm, generation, asyncio.get_running_loop()).start()
    except UnsupportedFeature as error:
        return openai_error(ChatError(400, str(error), param=error.param, code="unsupported"))
    except ChatError as error:
        return openai_error(error)
    wait = warm.settings().chat.wait_seconds
    first = await _next_event(job, request, wait + GRACE_SECONDS)
    if first is None:
        return openai_error(
            ChatError(503, f"the swarm did not answer within {wait:g} s (setting chat.wait_seconds)", "timeout")
        )
    if first[0] == "error":
        return openai_error(first[1])
    answer = _Answer(
        kind, warm.model_name, include_usage=bool(body.stream_options and body.stream_options.include_usage)
    )
    if body.stream:
        return StreamingResponse(
            answer.stream(job, request, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    event = first
    while event is not None and event[0] == "text":
        event = await _next_event(job, request, None)
    if event is None:
        return Response(status_code=499)  # the client went away; nobody reads this
    if event[0] == "error":
        return openai_error(event[1])
    return JSONResponse(answer.whole(event[1]))


async def _next_event(job: Job, request: Request, timeout: float | None) -> tuple[str, Any] | None:
    """The job's next event; None after ``timeout`` or when the client disconnected (the job is cancelled)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_SECONDS)
        except TimeoutError:
            pass
        if await request.is_disconnected() or (deadline is not None and time.monotonic() > deadline):
            job.cancel()
            return None


class _Answer:
    """One answer's OpenAI JSON: the whole response, or its stream of chunks."""

    def __init__(self, kind: Kind, model: str, include_usage: bool):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = {"chat": "chat.completion", "completion": "text_completion"}[self.kind]
        obj = kind + ".chunk" if chunk and self.kind == "chat" else kind
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def _choice(self, text: str | None, finish: str | None, whole: bool = False, role: bool = False) -> dict:
        if self.kind == "completion":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if whole:
            message = {"role": "assistant", "content": text, "refusal": None}
            return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    @staticmethod
    def _usage(outcome: Outcome) -> dict[str, int]:
        total = outcome.prompt_tokens + outcome.tokens
        return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.tokens, "total_tokens": total}

    def whole(self, outcome: Outcome) -> dict[str, Any]:
        return {
            **self._envelope(chunk=False),
            "choices": [self._choice(outcome.text, outcome.finish_reason, whole=True)],
            "usage": self._usage(outcome),
            "nectar": outcome.extras(),
        }

    def _event(self, choices: list[dict], **extra: Any) -> bytes:
        data = {**self._envelope(chunk=True), "choices": choices, **extra}
        if self.include_usage:
            data.setdefault("usage", None)
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    async def stream(self, job: Job, request: Request, first: tuple[str, Any]) -> AsyncIterator[bytes]:
        """Chunks until the job ends, then ``[DONE]``; leaving early (a disconnect) cancels the job."""
        try:
            if self.kind == "chat":
                yield self._event([self._choice(None, None, role=True)])
            event: tuple[str, Any] | None = first
            while event is not None and event[0] == "text":
                yield self._event([self._choice(event[1], None)])
                event = await _next_event(job, request, None)
            if event is None:
                return
            if event[0] == "error":
                error: ChatError = event[1]
                message = {"message": str(error), "type": error.kind, "param": error.param, "code": error.code}
                yield f"data: {json.dumps({'error': message})}\n\n".encode()
            else:
                outcome: Outcome = event[1]
                yield self._event([self._choice(None, outcome.finish_reason)], nectar=outcome.extras())
                if self.include_usage:
                    yield self._event([], usage=self._usage(outcome), nectar=outcome.extras())
            yield b"data: [DONE]\n\n"
        finally:
            job.cancel()  # a no-op when it finished; otherwise the session ends before the next token
