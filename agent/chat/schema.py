"""Types of stored conversations, shared by the API (``conversations_api.py``), the store and ``ChatClient``.

A conversation is a tree of messages: each message names its parent, so a regenerated answer or an edited
question is a sibling of the earlier one and nothing is lost. ``current_id`` is the leaf the owner looks at;
``Conversation.path()`` is the branch from the root to it, ``Conversation.siblings()`` the alternatives at a
turn (the "2/3" arrows of a chat window).

Imports only pydantic: the GUI and the terminal chat use these classes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "assistant", "system"]
ExportFormat = Literal["markdown", "json"]
EXPORT_VERSION = 1  # the "nectar_export" field of a JSON export


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer agent may add fields


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a request is an error, not a silent no-op


class Sampling(BaseModel):
    """How answers in a conversation are generated (the chat window's parameters panel)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy (always the most likely token)")
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1, le=32768, description="longest answer, in tokens")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="1: none")
    seed: int | None = Field(None, ge=0, description="the same seed and settings give the same answer")
    stop: list[str] = Field(default_factory=list, max_length=4)


class MessageMeta(BaseModel):
    """How an answer was made; every field is optional, and fields a newer agent adds are kept."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    route: list[str] | None = None  # "start:end@peer" of each server that held blocks
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    time_to_first_token: float | None = None  # seconds
    tokens_per_second: float | None = None
    finish_reason: str | None = None  # "stop", "length", or "cancelled" when the owner stopped it
    sampling: Sampling | None = None


class Message(_Answer):
    id: int
    conversation_id: int
    parent_id: int | None  # None: a first message
    role: Role
    content: str
    created: float  # unix time
    meta: MessageMeta = Field(default_factory=MessageMeta)


class ConversationSummary(_Answer):
    id: int
    title: str
    created: float
    updated: float
    message_count: int = 0


class Conversation(ConversationSummary):
    system_prompt: str = ""
    sampling: Sampling = Field(default_factory=Sampling)
    current_id: int | None = None  # the leaf shown; None: no messages yet
    messages: list[Message] = Field(default_factory=list)  # every branch, oldest first

    def message(self, message_id: int) -> Message:
        for message in self.messages:
            if message.id == message_id:
                return message
        raise KeyError(message_id)

    def path(self, leaf_id: int | None = None) -> list[Message]:
        """The branch from the first message to ``leaf_id`` (default: the current leaf), oldest first."""
        by_id = {message.id: message for message in self.messages}
        node = by_id.get(self.current_id if leaf_id is None else leaf_id)
        branch = []
        while node is not None:
            branch.append(node)
            node = by_id.get(node.parent_id) if node.parent_id is not None else None
        return branch[::-1]

    def siblings(self, message_id: int) -> list[Message]:
        """Messages with the same parent as ``message_id`` (itself included), oldest first."""
        parent = self.message(message_id).parent_id
        return [message for message in self.messages if message.parent_id == parent]

    def chat_messages(self, leaf_id: int | None = None) -> list[dict[str, str]]:
        """The branch as OpenAI ``messages`` (system prompt first), ready for ``/v1/chat/completions``."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": m.role, "content": m.content} for m in self.path(leaf_id)]


class ConversationList(_Answer):
    conversations: list[ConversationSummary]
    total: int


class NewMessage(_Request):
    role: Role
    content: str = Field(max_length=1_000_000)
    parent_id: int | Literal["current"] | None = Field(
        "current", description='"current": after the current leaf; null: a new first message; an id: a branch'
    )
    meta: MessageMeta = Field(default_factory=MessageMeta)


class NewConversation(_Request):
    title: str = Field("", max_length=200, description="empty: taken from the first question")
    system_prompt: str = Field("", max_length=100_000)
    sampling: Sampling = Field(default_factory=Sampling)
    messages: list[NewMessage] = Field(default_factory=list, description="appended in order, each after the last")


class ConversationChange(_Request):
    """Fields left out stay as they are."""

    title: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)
    sampling: Sampling | None = None
    current_id: int | None = Field(None, description="show another branch: a message of this conversation")


class ListQuery(_Request):
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class SearchQuery(_Request):
    q: str = Field(min_length=1, max_length=500, description="words found in titles or messages (any case)")
    limit: int = Field(50, ge=1, le=1000)


class SearchHit(_Answer):
    conversation_id: int
    title: str
    message_id: int | None = None  # None: the title matched
    role: Role | None = None
    snippet: str  # the matching text with some context
    updated: float


class SearchAnswer(_Answer):
    hits: list[SearchHit]


class ExportQuery(_Request):
    format: ExportFormat = "markdown"


class Deleted(_Answer):
    ok: bool = True
    deleted: int = 0  # conversations or messages removed


def export_json(conversation: Conversation) -> dict[str, Any]:
    """A self-describing JSON export: every branch, the current path, and the settings used."""
    data = conversation.model_dump(mode="json")
    data["nectar_export"] = EXPORT_VERSION
    data["current_path"] = [message.id for message in conversation.path()]
    return data


def export_markdown(conversation: Conversation) -> str:
    """The current branch as Markdown: title, system prompt, then each turn under its role."""
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    for message in conversation.path():
        lines += [f"## {message.role.capitalize()}", "", message.content.rstrip(), ""]
        meta = message.meta
        if message.role == "assistant" and meta.tokens_per_second is not None:
            lines += [f"*{meta.completion_tokens or 0} tokens, {meta.tokens_per_second:.1f} tokens/s*", ""]
    return "\n".join(lines).rstrip() + "\n"
