"""The volunteer agent around the engine.

- ``cli.py``: the ``nectar`` command line (``dht``, ``serve``, ``generate``, ``swarm``-side commands, ``demo``).
- ``cli_args.py``: derives command-line options from the engine's settings dataclasses (declared once).
- ``local_swarm.py``: ``LocalSwarm``, a DHT node and server processes on this machine (the demo, tests).
- ``dht_node.py``: a standalone bootstrap DHT node.

The agent imports the engine, never the GUI.
"""
