"""``ChatClient``: ``AgentClient`` plus the conversation endpoints and the OpenAI-compatible chat, typed.

The conversation methods are built from ``CONVERSATION_ENDPOINTS``; ``chat_stream`` reads the server-sent events
of ``/v1/chat/completions`` into ``ChatDelta`` pieces, and closing its iterator (or breaking out of the loop)
closes the connection, which ends the swarm session at once: that is how a chat window's Stop works.
Imports neither torch nor the engine (the GUI uses it). Synchronous: call it off the GUI thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from pydantic import BaseModel, Field

from agent.api.endpoints import API_PREFIX
from agent.chat.endpoints import CONVERSATION_ENDPOINTS_BY_NAME
from agent.chat.schema import (
    Conversation,
    ConversationChange,
    ConversationList,
    Deleted,
    ExportFormat,
    ExportQuery,
    ListQuery,
    Message,
    MessageMeta,
    NewConversation,
    NewMessage,
    Role,
    Sampling,
    SearchAnswer,
    SearchQuery,
)
from agent.client import AgentApiError, AgentClient, AgentClientError, AgentNotRunning, _error_message, _request

CHAT_TIMEOUT = httpx.Timeout(10.0, read=600.0)  # a long answer from a slow swarm streams for minutes


class ModelInfo(BaseModel):
    """One entry of ``/v1/models`` (OpenAI's fields, plus whether every block is served right now)."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "nectar"
    ready: bool | None = None  # every block of the model has a server now (None: not known yet)
    missing_blocks: list[int] = Field(default_factory=list)


class ChatDelta(BaseModel):
    """One streamed piece: ``text`` to append; the last piece has ``finish_reason`` and, when asked, ``meta``."""

    text: str = ""
    finish_reason: str | None = None  # "stop" or "length"
    meta: MessageMeta | None = None  # usage and Nectar's extras (route, time to first token, tokens/s)


class ChatClient(AgentClient):
    """``ChatClient.connect()`` like ``AgentClient``; every control method is here too."""

    # conversations
    def list_conversations(self, limit: int = 50, offset: int = 0) -> ConversationList:
        return self._conversations("list_conversations", request=_request(ListQuery, limit=limit, offset=offset))

    def create_conversation(
        self,
        title: str = "",
        system_prompt: str = "",
        sampling: Sampling | None = None,
        messages: list[NewMessage] | None = None,
    ) -> Conversation:
        request = _request(
            NewConversation,
            title=title,
            system_prompt=system_prompt,
            sampling=sampling or Sampling(),
            messages=messages or [],
        )
        return self._conversations("create_conversation", request=request)

    def search_conversations(self, text: str, limit: int = 50) -> SearchAnswer:
        return self._conversations("search_conversations", request=_request(SearchQuery, q=text, limit=limit))

    def get_conversation(self, conversation_id: int) -> Conversation:
        return self._conversations("get_conversation", conversation_id)

    def change_conversation(self, conversation_id: int, **changes: Any) -> Conversation:
        """``title``, ``system_prompt``, ``sampling`` or ``current_id`` (the branch shown)."""
        return self._conversations(
            "change_conversation", conversation_id, request=_request(ConversationChange, **changes)
        )

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        return self.change_conversation(conversation_id, title=title)

    def delete_conversation(self, conversation_id: int) -> Deleted:
        return self._conversations("delete_conversation", conversation_id)

    def append_message(
        self,
        conversation_id: int,
        role: Role,
        content: str,
        parent_id: int | str | None = "current",
        meta: MessageMeta | None = None,
    ) -> Message:
        """After the current leaf (default), as a new first message (``parent_id=None``) or below any message."""
        request = _request(NewMessage, role=role, content=content, parent_id=parent_id, meta=meta or MessageMeta())
        return self._conversations("append_message", conversation_id, request=request)

    def delete_message(self, conversation_id: int, message_id: int) -> Deleted:
        return self._conversations("delete_message", conversation_id, message_id)

    def export_conversation(self, conversation_id: int, format: ExportFormat = "markdown") -> str:
        """Markdown (the current branch) or JSON text (every branch)."""
        return self._conversations("export_conversation", conversation_id, request=_request(ExportQuery, format=format))

    # the OpenAI-compatible API
    def models(self) -> list[ModelInfo]:
        response = self._send("GET", self.url + "/v1/models")
        return [ModelInfo.model_validate(entry) for entry in response.json()["data"]]

    def chat(self, messages: list[dict[str, str]], **parameters: Any) -> dict[str, Any]:
        """One non-streamed ``/v1/chat/completions`` answer, as OpenAI's JSON (``nectar`` holds the extras)."""
        body = {"model": parameters.pop("model", "default"), "messages": messages, **parameters, "stream": False}
        return self._send("POST", self.url + "/v1/chat/completions", json=body, timeout=CHAT_TIMEOUT).json()

    def chat_stream(self, messages: list[dict[str, str]], **parameters: Any) -> Iterator[ChatDelta]:
        """Stream an answer; ``parameters`` are OpenAI's (``temperature``, ``max_tokens``, ``seed``, ``stop``...).

        Close the iterator (``.close()`` or leave the loop) to stop the answer: the agent ends the swarm session.
        """
        body = {
            "model": parameters.pop("model", "default"),
            "messages": messages,
            **parameters,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            with self._http.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=CHAT_TIMEOUT) as reply:
                if reply.status_code != 200:
                    reply.read()
                    raise AgentApiError(_error_message(reply), reply.status_code)
                yield from _deltas(reply)
        except httpx.ConnectError:
            raise AgentNotRunning(f"the agent's API at {self.url} does not answer; is the agent running?") from None
        except httpx.TimeoutException:
            raise AgentClientError(f"the agent's API at {self.url} did not answer in time") from None

    def reply(self, conversation_id: int, parent_id: int | None = None) -> Reply:
        """Answer the conversation's current branch (or the branch ending at ``parent_id``: regenerate an answer
        by passing its question) with the conversation's system prompt and sampling; iterate the ``Reply`` for
        the text, ``stop()`` it to stop. The answer is stored as a reply of that message when it ends, also when
        stopped (``finish_reason`` "cancelled"); ``reply.message`` is then the stored message."""
        conversation = self.get_conversation(conversation_id)
        leaf = conversation.current_id if parent_id is None else parent_id
        if leaf is None:
            raise AgentClientError(f"conversation {conversation_id} has no message to answer")
        return Reply(self, conversation, leaf)

    def sampling_parameters(self, sampling: Sampling) -> dict[str, Any]:
        """A conversation's ``Sampling`` as OpenAI request parameters."""
        parameters: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.repetition_penalty != 1.0:
            parameters["repetition_penalty"] = sampling.repetition_penalty
        if sampling.seed is not None:
            parameters["seed"] = sampling.seed
        if sampling.stop:
            parameters["stop"] = list(sampling.stop)
        return parameters

    # internals
    def _conversations(self, name: str, *ids: int, request: BaseModel | None = None) -> Any:
        endpoint = CONVERSATION_ENDPOINTS_BY_NAME[name]
        names = [part[1:-1] for part in endpoint.path.split("/") if part.startswith("{")]
        path = endpoint.path.format(**dict(zip(names, ids, strict=True)))
        payload = request.model_dump(mode="json", exclude_unset=endpoint.method == "PATCH") if request else None
        options: dict[str, Any] = {}
        if endpoint.method == "GET" and payload is not None:
            options["params"] = payload
        elif payload is not None:
            options["json"] = payload
        response = self._send(endpoint.method, self.url + API_PREFIX + path, **options)
        if endpoint.answer is None:
            return response.text
        return endpoint.answer.model_validate(response.json())


class Reply:
    """One streamed answer in a stored conversation (see ``ChatClient.reply``)."""

    def __init__(self, client: ChatClient, conversation: Conversation, parent_id: int):
        self.client, self.conversation, self.parent_id = client, conversation, parent_id
        self.parts: list[str] = []
        self.meta: MessageMeta | None = None
        self.message: Message | None = None  # the stored answer, once it ended
        self._deltas = self._run()

    def __iter__(self) -> Iterator[ChatDelta]:
        return self._deltas

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def stop(self) -> None:
        """Stop the answer (the agent ends the swarm session); what came so far is stored."""
        self._deltas.close()

    def _run(self) -> Iterator[ChatDelta]:
        messages = self.conversation.chat_messages(self.parent_id)
        stream = self.client.chat_stream(messages, **self.client.sampling_parameters(self.conversation.sampling))
        try:
            for delta in stream:
                self.parts.append(delta.text)
                self.meta = delta.meta or self.meta
                yield delta
        except GeneratorExit:
            stream.close()
            self._store(cancelled=True)
            raise
        self._store(cancelled=False)

    def _store(self, cancelled: bool) -> None:
        meta = self.meta or MessageMeta()
        meta.sampling = self.conversation.sampling
        if cancelled:
            meta.finish_reason = "cancelled"
        self.message = self.client.append_message(
            self.conversation.id, "assistant", self.text, parent_id=self.parent_id, meta=meta
        )


def _deltas(reply: httpx.Response) -> Iterator[ChatDelta]:
    """Server-sent events (``data: {chunk}`` lines, ``data: [DONE]`` last) -> ``ChatDelta``."""
    finish: str | None = None
    for line in reply.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise AgentApiError(str(chunk["error"].get("message", "the answer failed")), 503)
        text, chunk_finish = "", None
        for choice in chunk.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
            chunk_finish = choice.get("finish_reason") or chunk_finish
        finish = chunk_finish or finish
        usage, extras = chunk.get("usage"), chunk.get("nectar")
        meta = None
        if usage or extras:
            meta = MessageMeta(
                model=chunk.get("model"),
                prompt_tokens=(usage or {}).get("prompt_tokens"),
                completion_tokens=(usage or {}).get("completion_tokens"),
                finish_reason=finish,
                **(extras or {}),
            )
        if text or meta is not None or chunk_finish:
            yield ChatDelta(text=text, finish_reason=chunk_finish, meta=meta)
