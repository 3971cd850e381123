"""A server process: holds a span of blocks and serves it over hivemind P2P.

- ``backend.py``: ``SpanBackend`` validates requests and runs inference steps, forward and backward on the span.
- ``memory.py``: ``CacheBudget``, the hard limit on attention-cache memory shared by all sessions.
- ``executor.py``: ``PriorityExecutor``, the compute thread that puts interactive inference first.
- ``handler.py``: ``BlockServicer``, the RPCs (inference stream, forward, backward, info).
- ``adapters.py``: ``AdapterSet``, PEFT LoRA adapters on the span's linear layers, applied per request by name.
- ``activations.py``: ``ActivationStore``, forward graphs kept for their backward within a memory limit.
- ``throughput.py``: measured compute and network speed, combined into the announced throughput, cached on disk.
- ``span_size.py``: how many blocks fit the memory budget when ``--num-blocks`` is not given.
- ``placement.py``: records -> ``SpanInfo``; the span a joining server takes and the periodic rebalancing check.
- ``span_host.py``: ``SpanHost`` (the served span, its records, a move without a gap) and ``BackendSwitch``.
- ``server.py``: ``ServerSettings`` and ``run_server``: load, join the DHT, announce, serve, leave cleanly.
"""
