"""The client side of the swarm.

- ``swarm.py``: ``SwarmConnection``, a P2P peer and client-mode DHT node on a background event loop.
- ``routing.py``: ``make_route``, the chain of servers that covers a range of blocks.
- ``session.py``: ``InferenceSession``, a generation's attention caches held along a route.
- ``remote.py``: ``RemoteBlocks``, forward and backward through the swarm as a torch module.
- ``model.py``: ``DistributedCausalLM``, local embeddings and head around the remote blocks.
- ``generation.py``: ``generate``: sampling, stop strings, streaming, chat prompts.
"""
