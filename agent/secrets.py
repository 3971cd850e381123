"""Secrets (a Hugging Face token, a private swarm key): the system keyring, or a 0600 file where none exists.

Headless Linux usually has no keyring backend; there the secrets live in ``secrets.json`` (0600) in the data
directory, and ``where()`` says so, so the user always knows which store holds each secret. Secret values never
appear in the settings file, in logs or in error messages (``Secret`` hides itself in ``repr``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keyring
import keyring.errors

from agent.paths import write_private

logger = logging.getLogger(__name__)

SERVICE = "nectar"
KNOWN_SECRETS = {"hf_token": "Hugging Face access token", "swarm_key": "private swarm key"}


class Secret(str):
    """A string that never shows itself in ``repr`` (tracebacks, logs of objects, f-strings with !r)."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class SecretLocation:
    name: str
    backend: str  # "keyring" or "file"
    detail: str  # the keyring backend's name or the file's path
    present: bool


class SecretStore:
    """get / set / delete / where, over the keyring when it has a usable backend, else a 0600 JSON file."""

    def __init__(self, fallback_file: Path, service: str = SERVICE):
        self.fallback_file, self.service = fallback_file, service

    @staticmethod
    def keyring_usable() -> bool:
        backend = keyring.get_keyring()
        return getattr(backend, "priority", 0) > 0 and "fail" not in type(backend).__module__

    def backend_name(self) -> str:
        return "keyring" if self.keyring_usable() else "file"

    def get(self, name: str) -> Secret | None:
        self._check(name)
        if self.keyring_usable():
            try:
                value = keyring.get_password(self.service, name)
            except keyring.errors.KeyringError as error:
                logger.warning("keyring unavailable (%s), reading the secrets file", type(error).__name__)
            else:
                if value is not None:
                    return Secret(value)
        value = self._read_file().get(name)
        return Secret(value) if value is not None else None

    def set(self, name: str, value: str) -> SecretLocation:
        self._check(name)
        if not value:
            raise ValueError(f"the {KNOWN_SECRETS[name]} is empty")
        if self.keyring_usable():
            try:
                keyring.set_password(self.service, name, value)
                self._forget_in_file(name)  # one copy only
                return self.where(name)
            except keyring.errors.KeyringError as error:
                logger.warning("keyring refused the secret (%s); keeping it in the 0600 file", type(error).__name__)
        stored = self._read_file()
        stored[name] = value
        write_private(self.fallback_file, json.dumps(stored))
        return SecretLocation(name, "file", str(self.fallback_file), True)

    def delete(self, name: str) -> None:
        self._check(name)
        if self.keyring_usable():
            try:
                keyring.delete_password(self.service, name)
            except keyring.errors.PasswordDeleteError:
                pass
            except keyring.errors.KeyringError:
                logger.warning("keyring unavailable; deleting from the secrets file only")
        self._forget_in_file(name)

    def where(self, name: str) -> SecretLocation:
        """Which store holds ``name`` (or would hold it, if it is not set)."""
        self._check(name)
        if name in self._read_file():
            return SecretLocation(name, "file", str(self.fallback_file), True)
        if self.keyring_usable():
            backend = keyring.get_keyring()
            try:
                present = keyring.get_password(self.service, name) is not None
            except keyring.errors.KeyringError:
                present = False
            return SecretLocation(name, "keyring", type(backend).__name__, present)
        return SecretLocation(name, "file", str(self.fallback_file), False)

    def _forget_in_file(self, name: str) -> None:
        stored = self._read_file()
        if stored.pop(name, None) is not None:
            write_private(self.fallback_file, json.dumps(stored))

    def _read_file(self) -> dict[str, str]:
        try:
            data = json.loads(self.fallback_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError):
            logger.warning("the secrets file %s is unreadable; treating it as empty", self.fallback_file)
            return {}
        return {key: value for key, value in data.items() if isinstance(value, str)} if isinstance(data, dict) else {}

    @staticmethod
    def _check(name: str) -> None:
        if name not in KNOWN_SECRETS:
            raise ValueError(f"unknown secret {name!r}; known: {', '.join(KNOWN_SECRETS)}")
