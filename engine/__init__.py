"""The distributed model: servers that hold spans of transformer blocks and clients that run through them.

Map of the package:
- ``models/``: one module per model family behind a registry (``models.get_family``); ``models/span.py`` runs a
  span of decoder layers with a per-session attention cache.
- ``weights.py``: finds a model (directory, Hugging Face cache, GGUF file, alias) and reads only the tensors asked for.
- ``gguf_cache.py``: converts a GGUF file once into a cached safetensors directory.
- ``packaged_models.py``: aliases of models that Python packages ship as GGUF files (assembled from parts once).
- ``quantization.py``: int8 / nf4 blocks with bitsandbytes, quantized as they load; precision order for clients.
- ``hf/``: every place that leans on transformers internals, one module per concern.
- ``records.py``: the DHT record that a server announces for each block (numbers clipped to plausible ranges), and
  reading the swarm's coverage.
- ``peer.py``: ``join_swarm``, the one way servers, clients and bootstrap nodes start their P2P daemon and DHT node.
- ``identity.py``: a peer's libp2p RSA key (``PeerKey``) and peer ids computed from public keys.
- ``signed_records.py``: ``SignedRecordValidator``, which every DHT node runs: a record is accepted only when the peer
  it names signed it, and never with a far-future expiry.
- ``swarm_key.py``: private swarms: key files and ``GuardedP2P``, which serves and calls only peers holding the key.
- ``wire.py``: the RPC message format (tensors plus msgpack metadata) and the errors that cross the wire.
- ``reachability.py``: dial-back checks (can peers reach me?), circuit-relay addresses, dialing a server by them.
- ``rejoin.py``: greeting the bootstrap peers again and again, so that a restarted one learns of us.
- ``server/``: a server process (block backend, cache budget, RPC handler, announcer, throughput, placement).
- ``client/``: routing, inference sessions, remote forward/backward, the distributed causal LM and generation.
- ``balance/``: block selection as pure functions and the swarm simulator.
- ``swarm_view.py``: per block the servers holding it and their throughput, per server its spans (``nectar swarm``).

The engine never imports ``agent`` or ``gui``.
"""
