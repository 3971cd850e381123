"""The agent's control API: the only door into a running agent (CLI, GUI and OpenAI clients all use it).

- ``models.py``: the request and answer types (pydantic), shared with the client.
- ``endpoints.py``: ``ENDPOINTS``, the one table of paths, methods, "changes state?" and types; ``AgentControl``,
  what the agent implements to answer them.
- ``auth.py``: the bearer token (a 0600 file made on first start) and the dependency that checks it.
- ``app.py``: ``create_app(control, token, extra_routers)``, the FastAPI app built from the table.
- ``server.py``: ``ApiServer``, uvicorn on 127.0.0.1 in a thread, and the ``api.json`` file the CLI reads.

``models.py`` and ``endpoints.py`` import neither FastAPI nor torch: the client and the GUI use them.
"""
