"""A server process: holds a span of blocks and serves it over hivemind P2P.

- ``backend.py``: ``SpanBackend`` validates requests and runs inference steps, forward and backward on the span.
- ``memory.py``: ``CacheBudget``, the hard limit on attention-cache memory shared by all sessions.
- ``executor.py``: ``PriorityExecutor``, the compute thread that puts interactive inference first.
- ``handler.py``: ``BlockServicer``, the RPCs (inference stream, forward, backward, info).
- ``server.py``: ``ServerSettings`` and ``run_server``: load, join the DHT, announce, serve, leave cleanly.
"""
