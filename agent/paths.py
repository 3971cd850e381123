"""Where the agent keeps its files: the platform's directories, or all under ``NECTAR_HOME``.

``NECTAR_HOME`` moves config, data, cache and logs together, so tests and several agents on one machine never
share a file. Every other module asks ``AgentPaths`` for a file instead of building paths itself.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "nectar"
HOME_VARIABLE = "NECTAR_HOME"


@dataclass(frozen=True)
class AgentPaths:
    """The four directories of one agent and the files in them."""

    config_dir: Path
    data_dir: Path
    cache_dir: Path
    log_dir: Path

    @classmethod
    def default(cls) -> AgentPaths:
        """``NECTAR_HOME/{config,data,cache,logs}`` when set, else the platform's per-user directories."""
        home = os.environ.get(HOME_VARIABLE)
        if home:
            root = Path(home).expanduser().absolute()
            return cls(root / "config", root / "data", root / "cache", root / "logs")
        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        return cls(
            Path(dirs.user_config_dir), Path(dirs.user_data_dir), Path(dirs.user_cache_dir), Path(dirs.user_log_dir)
        )

    def create(self) -> AgentPaths:
        for directory in (self.config_dir, self.data_dir, self.cache_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def config_file(self) -> Path:
        """The one human-editable TOML settings file."""
        return self.config_dir / "nectar.toml"

    @property
    def api_file(self) -> Path:
        """Written by a running agent: its API address, pid and token file; read by the CLI and the GUI."""
        return self.data_dir / "api.json"

    @property
    def token_file(self) -> Path:
        """The API's bearer token (0600), created on first start."""
        return self.data_dir / "api-token"

    @property
    def lock_file(self) -> Path:
        """Held by the running agent: one agent per data directory."""
        return self.data_dir / "agent.lock"

    @property
    def identity_file(self) -> Path:
        """The agent's DHT private key (0600): its peer id stays the same across restarts."""
        return self.data_dir / "identity.key"

    @property
    def swarm_key_file(self) -> Path:
        """The private swarm's key (0600), written from the ``swarm_key`` secret for the agent's children."""
        return self.data_dir / "swarm.key"

    def swarm_key(self) -> str | None:
        """The swarm key file to pass as ``--swarm-key``, or None in an open swarm."""
        return str(self.swarm_key_file) if self.swarm_key_file.is_file() else None

    @property
    def secrets_file(self) -> Path:
        """Fallback secret store (0600) where no keyring backend exists."""
        return self.data_dir / "secrets.json"

    @property
    def stats_db(self) -> Path:
        """Contribution statistics (SQLite)."""
        return self.data_dir / "stats.sqlite"

    @property
    def chat_db(self) -> Path:
        """Stored conversations (SQLite)."""
        return self.data_dir / "chat.sqlite"

    @property
    def benchmark_file(self) -> Path:
        """The last benchmark result, with its time."""
        return self.cache_dir / "benchmark.json"

    @property
    def agent_log(self) -> Path:
        return self.log_dir / "agent.log"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def dht_log(self) -> Path:
        return self.log_dir / "dht.log"

    def log_file(self, source: str) -> Path:
        """The log of ``agent``, ``server`` or ``dht``: all in one directory."""
        return {"agent": self.agent_log, "server": self.server_log, "dht": self.dht_log}[source]


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file only its owner can read (0600 from the start, never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # writers never share it
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)
    os.chmod(temporary, 0o600)  # an existing .tmp keeps its old mode through O_CREAT
    os.replace(temporary, path)
