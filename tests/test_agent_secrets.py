"""Secrets: the keyring when it has a backend, a 0600 file when it has none; never in the settings file or logs."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import keyring.backends.fail
import pytest
from agent_helpers import MemoryKeyring, use_keyring

from agent.logs import RedactingFilter
from agent.secrets import Secret, SecretStore
from agent.settings_file import SettingsFile

TOKEN = "hf_secretvalue_1234567890"


@pytest.fixture
def no_keyring() -> Iterator[None]:
    previous = use_keyring(keyring.backends.fail.Keyring())
    yield
    use_keyring(previous)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    backend = MemoryKeyring()
    previous = use_keyring(backend)
    yield backend
    use_keyring(previous)


def test_without_a_keyring_backend_secrets_go_to_a_private_file(tmp_path: Path, no_keyring: None) -> None:
    store = SecretStore(tmp_path / "secrets.json")
    location = store.set("hf_token", TOKEN)
    assert location.backend == "file" and location.present
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    assert store.get("hf_token") == TOKEN and store.where("swarm_key").present is False
    store.delete("hf_token")
    assert store.get("hf_token") is None


def test_with_a_keyring_backend_secrets_go_to_the_keyring(tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    store = SecretStore(tmp_path / "secrets.json")
    location = store.set("hf_token", TOKEN)
    assert (location.backend, location.detail, location.present) == ("keyring", "MemoryKeyring", True)
    assert memory_keyring.values[("nectar", "hf_token")] == TOKEN
    assert not (tmp_path / "secrets.json").exists()
    assert store.get("hf_token") == TOKEN


def test_unknown_secret_names_and_empty_values_are_refused(tmp_path: Path, no_keyring: None) -> None:
    store = SecretStore(tmp_path / "secrets.json")
    with pytest.raises(ValueError, match="unknown secret"):
        store.set("password", "x")
    with pytest.raises(ValueError, match="empty"):
        store.set("hf_token", "")


def test_secrets_stay_out_of_reprs_logs_and_the_settings_file(
    tmp_path: Path, no_keyring: None, caplog: pytest.LogCaptureFixture
) -> None:
    store = SecretStore(tmp_path / "secrets.json")
    store.set("hf_token", TOKEN)
    secret = store.get("hf_token")
    assert isinstance(secret, Secret) and TOKEN not in repr(secret) and TOKEN not in repr({"token": secret})
    file = SettingsFile(tmp_path / "nectar.toml")
    file.load()
    assert TOKEN not in file.path.read_text()
    redact = RedactingFilter([TOKEN])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token is %s", (TOKEN,), None)
    redact.filter(record)
    assert TOKEN not in record.getMessage() and "***" in record.getMessage()


def test_child_logs_are_redacted_too(tmp_path: Path) -> None:
    from agent.lending import _child_logger
    from agent.settings import Settings

    redact = RedactingFilter([TOKEN])
    log = _child_logger("nectar.test-child", tmp_path / "server.log", Settings(), redact)
    log.info("a child printed %s", TOKEN)
    text = (tmp_path / "server.log").read_text()
    assert TOKEN not in text and "a child printed ***" in text


@pytest.mark.parametrize("stored", ["KEYFILE", "HEX"])
def test_the_swarm_key_secret_becomes_a_private_key_file(tmp_path: Path, stored: str) -> None:
    """The agent writes the ``swarm_key`` secret (a key file's text, or its 64 hex digits) to a 0600 file for its
    DHT node, servers and client, and removes the file when the secret is gone or unusable."""
    from types import SimpleNamespace

    from agent.paths import AgentPaths
    from agent.service import Agent
    from engine.swarm_key import load_swarm_key, new_swarm_key

    key_file = new_swarm_key()
    value = key_file if stored == "KEYFILE" else key_file.splitlines()[-1]
    paths = AgentPaths(tmp_path / "c", tmp_path / "d", tmp_path / "k", tmp_path / "l")
    errors: list[str] = []
    agent = SimpleNamespace(paths=paths, state=SimpleNamespace(record_error=errors.append))
    assert paths.swarm_key() is None
    Agent._write_swarm_key(agent, value)
    assert paths.swarm_key() == str(paths.swarm_key_file)
    assert stat.S_IMODE(paths.swarm_key_file.stat().st_mode) == 0o600
    assert load_swarm_key(paths.swarm_key_file) == bytes.fromhex(key_file.splitlines()[-1])
    Agent._write_swarm_key(agent, "not a key")
    assert paths.swarm_key() is None and "swarm key is unusable" in errors[0]
    assert "not a key" not in errors[0]  # a secret's value never reaches a message
    Agent._write_swarm_key(agent, value)
    Agent._write_swarm_key(agent, None)
    assert paths.swarm_key() is None
