"""The volunteer agent around the engine.

Command line:
- ``cli.py``: the ``nectar`` command line (``dht``, ``serve``, ``generate``, ``swarm``, ``finetune``, ``demo``).
- ``cli_agent.py``: the agent's commands (``run``, ``status``, ``pause``, ``resume``, ``snooze``, ``stop``,
  ``config``, ``secret``, ``bench``); they load neither torch nor the engine.
- ``cli_args.py``: derives command-line options from the engine's settings dataclasses (declared once).

The agent process:
- ``paths.py``: ``AgentPaths``, the config/data/cache/log directories (``NECTAR_HOME`` moves them all).
- ``settings.py``: every setting declared once (pydantic); ``iter_settings()`` for forms and flags.
- ``settings_file.py``: the TOML file, validated on load, edited in place with its comments.
- ``secrets.py``: ``SecretStore``, the keyring or a 0600 file.
- ``throttle.py``: ``decide()``, the pure throttle policy (mode and reason).
- ``state.py``: ``AgentState``, what the agent knows and its answers to the API.
- ``service.py``: ``Agent``, the composition root (lock, settings, API, parts); ``runner.py`` runs it headless.
- ``api/``: the control API (endpoint table, token auth, FastAPI app, uvicorn thread).
- ``client.py``: ``AgentClient``, the typed API client shared by the CLI and the GUI.
- ``logs.py``: rotating logs and their tails.
- ``executable.py``: how the program starts itself again (``python -m agent`` or the frozen bundle's executable).
- ``autostart.py``: start at login (XDG autostart, Windows Run key, macOS LaunchAgent) behind one interface.

Swarm helpers:
- ``local_swarm.py``: ``LocalSwarm``, a DHT node and server processes on this machine (the demo, tests).
- ``dht_node.py``: a standalone bootstrap DHT node.

The agent imports the engine, never the GUI.
"""
