"""A server process: holds a span of blocks (a contiguous range of the model's blocks) and serves it over P2P.

"Span" means only that range here and in ``engine.models`` (``BlockSpan``, its loaded layers); a server's place and
throughput as balancing sees it is a ``ServerPlacement`` (``engine.balance``).

- ``settings.py``: ``ServerSettings``, every knob of a server, declared once (the CLI is derived from it).
- ``precision.py``: ``--device`` and ``--dtype`` as torch objects; ``auto`` is the checkpoint's own dtype.
- ``backend.py``: ``SpanBackend`` validates requests and runs inference steps, forward and backward on the span's
  device (inputs moved there, answers moved back for the wire).
- ``memory.py``: ``CacheBudget``, the hard limit on attention-cache memory, in total and per client.
- ``limits.py``: ``RequestLimits`` and ``Admission``: sessions and queued jobs per client and in total.
- ``executor.py``: ``PriorityExecutor``, the compute thread: inference first, training aged in, a bounded queue.
- ``handler.py``: ``BlockServicer``, the RPCs (inference stream, forward, backward, ping, info; names in ``wire``).
- ``adapters.py``: ``AdapterSet``, PEFT LoRA adapters on the span's linear layers, applied per request by name.
- ``activations.py``: ``ActivationStore``, forward graphs kept for their backward within a memory limit.
- ``throughput.py``: measured compute and network speed, combined into the announced throughput, cached on disk.
- ``span_size.py``: how many blocks fit the memory budget (one term per memory item) without ``--num-blocks``.
- ``placement.py``: records -> ``ServerPlacement``; the span a joining server takes and the rebalancing check.
- ``span_host.py``: ``SpanHost`` (the served span, its records, a move without a gap) and ``BackendSwitch``.
- ``faults.py``: faults that tests inject into a real server process (``NECTAR_TEST_FAULT``).
- ``network.py``: ``join_network``: listen, announce, get dialed back, else relays, else say which port to forward.
- ``server.py``: ``Server`` and ``run_server``: load, join the DHT, announce, serve, leave cleanly.
"""
