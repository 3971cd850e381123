"""The one table of the conversation endpoints: name, method, path, request and answer types.

Read by the router (``conversations_api.py``) and by ``ChatClient`` (``agent/chat_client.py``), so the two agree
on every path and type, as the control API's ``ENDPOINTS`` do. Paths sit under the control API's ``/api`` prefix
and carry ``{conversation_id}`` and ``{message_id}``; a GET's request model is its query. Imports no FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from agent.chat.schema import (
    Conversation,
    ConversationChange,
    ConversationList,
    Deleted,
    ExportQuery,
    ListQuery,
    Message,
    NewConversation,
    NewMessage,
    SearchAnswer,
    SearchQuery,
)


@dataclass(frozen=True)
class ConversationEndpoint:
    name: str  # the ChatClient method
    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    request: type[BaseModel] | None
    answer: type[BaseModel] | None  # None: text (the export)
    summary: str


CONVERSATION_ENDPOINTS: tuple[ConversationEndpoint, ...] = (
    ConversationEndpoint("list_conversations", "GET", "/conversations", ListQuery, ConversationList, "newest first"),
    ConversationEndpoint(
        "create_conversation", "POST", "/conversations", NewConversation, Conversation, "with optional messages"
    ),
    ConversationEndpoint(
        "search_conversations", "GET", "/conversations/search", SearchQuery, SearchAnswer, "titles and messages"
    ),
    ConversationEndpoint(
        "get_conversation", "GET", "/conversations/{conversation_id}", None, Conversation, "every message and branch"
    ),
    ConversationEndpoint(
        "change_conversation",
        "PATCH",
        "/conversations/{conversation_id}",
        ConversationChange,
        Conversation,
        "rename, system prompt, sampling, the branch shown",
    ),
    ConversationEndpoint(
        "delete_conversation", "DELETE", "/conversations/{conversation_id}", None, Deleted, "with its messages"
    ),
    ConversationEndpoint(
        "append_message",
        "POST",
        "/conversations/{conversation_id}/messages",
        NewMessage,
        Message,
        "after the current leaf, or as a branch of any message",
    ),
    ConversationEndpoint(
        "delete_message",
        "DELETE",
        "/conversations/{conversation_id}/messages/{message_id}",
        None,
        Deleted,
        "a message and every reply below it",
    ),
    ConversationEndpoint(
        "export_conversation",
        "GET",
        "/conversations/{conversation_id}/export",
        ExportQuery,
        None,
        "Markdown (the current branch) or JSON (every branch)",
    ),
)
CONVERSATION_ENDPOINTS_BY_NAME = {endpoint.name: endpoint for endpoint in CONVERSATION_ENDPOINTS}
