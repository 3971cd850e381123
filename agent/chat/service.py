"""``ChatService``: the agent's chat part: the conversation store, the warm swarm client, and their routers.

A part of the agent (``start``/``stop``); nothing heavy happens at start: the model is loaded by the first chat
request (``warm.py``), so an agent that is never asked to chat never loads torch for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter

from agent.api.models import ChatStatus
from agent.chat.conversations_api import conversation_router
from agent.chat.openai_api import openai_router
from agent.chat.store import ConversationStore
from agent.chat.warm import WarmModel
from agent.paths import AgentPaths
from agent.state import AgentState

logger = logging.getLogger(__name__)


class ChatService:
    def __init__(self, paths: AgentPaths, state: AgentState, initial_peers: Callable[[], list[str]]):
        """``initial_peers``: the swarm's DHT addresses, asked when the model loads (the local swarm's DHT starts
        after the API)."""
        self.paths, self.state, self.initial_peers = paths, state, initial_peers
        self.store = ConversationStore(paths.chat_db)
        self.warm = WarmModel(lambda: state.settings, initial_peers, state.owner_request, paths.swarm_key)
        state.chat_status = self.status

    def routers(self) -> list[APIRouter]:
        return [conversation_router(self.store), openai_router(self.warm)]

    def status(self) -> ChatStatus:
        warm = self.warm
        limit = self.state.settings.chat.max_concurrent
        return ChatStatus(
            state=warm.state, model=warm.model_name, active=warm.active, max_concurrent=limit, detail=warm.detail
        )

    def start(self) -> None:
        pass  # the model loads on first use

    def stop(self) -> None:
        """End the chat's swarm sessions (before the agent's servers drain); the store stays open for the API."""
        self.warm.close()

    def close(self) -> None:
        self.stop()
        self.store.close()
