"""Chat through the swarm: stored conversations and an OpenAI-compatible API on the agent's control API.

- ``schema.py``: conversation types (a tree of messages; ``Conversation.path()``, ``siblings()``), no FastAPI.
- ``endpoints.py``: ``CONVERSATION_ENDPOINTS``, the table of conversation endpoints (router and client read it).
- ``store.py``: ``ConversationStore``, conversations in SQLite in the data directory.
- ``conversations_api.py``: ``conversation_router``, the endpoints over the store.
- ``service.py``: ``ChatService``, the agent's chat part (store, warm model, routers).

The typed client is ``agent/chat_client.py`` (``ChatClient``); it imports neither torch nor the engine.
"""
