"""The TOML settings file: read and validated on load, edited in place so the user's comments survive.

A bad value is one line naming the key and the value; an unknown key is reported (returned as a warning and
logged), never silently dropped; the file is rewritten only after the whole new state validated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError
from tomlkit.exceptions import ParseError

from agent.settings import SettingInfo, Settings, iter_settings, setting_info, split_key


class SettingsError(ValueError):
    """A settings file or a change that does not validate; the message names the key and the bad value."""


@dataclass
class LoadedSettings:
    settings: Settings
    warnings: list[str] = field(default_factory=list)


def validate(data: dict[str, Any], origin: str) -> Settings:
    """``{"group": {"name": value}}`` -> ``Settings``, or a ``SettingsError`` naming each bad key and value."""
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            value = item.get("input")
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key} = {json.dumps(value, default=str)}: {message}")
        raise SettingsError(f"{origin}: " + "; ".join(problems)) from None


def with_overrides(settings: Settings, overrides: dict[str, Any], origin: str = "command line") -> Settings:
    """``settings`` with ``{"group.name": value}`` on top (flags of this run: validated, never saved)."""
    if not overrides:
        return settings
    data = settings.model_dump()
    for key, value in overrides.items():
        group, name = split_key(key)
        data[group][name] = value
    return validate(data, origin)


def split_unknown(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Drop the keys no setting declares, returning them as ``group.name`` so the caller can report them."""
    known: dict[str, Any] = {}
    unknown: list[str] = []
    groups = Settings.model_fields
    for group, values in data.items():
        if group not in groups or not isinstance(values, dict):
            unknown.append(group)
            continue
        names = groups[group].annotation.model_fields
        known[group] = {name: value for name, value in values.items() if name in names}
        unknown += [f"{group}.{name}" for name in values if name not in names]
    return known, unknown


def parse_value(info: SettingInfo, text: str) -> Any:
    """A value typed on the command line -> the setting's type (validation comes after)."""
    text = text.strip()
    if info.kind == "list":
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                raise SettingsError(f"{info.key} = {text}: not a JSON list ({error.msg})") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if info.kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise SettingsError(f"{info.key} = {text!r}: expected true or false")
    return text  # pydantic converts "3" to int and float itself, with its own messages


class SettingsFile:
    """One TOML file of settings; ``load`` creates it with every setting and its help on first use."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> LoadedSettings:
        document = self._read()
        known, unknown = split_unknown(document.unwrap())
        warnings = [f"{self.path}: unknown setting {key!r} (not used)" for key in unknown]
        return LoadedSettings(validate(known, str(self.path)), warnings)

    def get(self, key: str) -> Any:
        split_key(key)
        return self.load().settings.get(key)

    def set(self, key: str, text: str) -> Settings:
        """``nectar config set KEY VALUE``: parse the text as the setting's type, validate, write."""
        split_key(key)
        return self.update({key: parse_value(setting_info(key), text)})

    def update(self, changes: dict[str, Any]) -> Settings:
        """Apply ``{"group.name": value}``; nothing is written unless the whole result validates."""
        document = self._read()
        known, _ = split_unknown(document.unwrap())
        for key, value in changes.items():
            group, name = split_key(key)
            known.setdefault(group, {})[name] = value
        settings = validate(known, "cannot set")
        for key in changes:
            group, name = split_key(key)
            if group not in document:
                document[group] = tomlkit.table()
            document[group][name] = _toml_value(getattr(getattr(settings, group), name))
        self._write(document)
        return settings

    def _read(self) -> tomlkit.TOMLDocument:
        if not self.path.exists():
            self._write(default_document())
        try:
            return tomlkit.parse(self.path.read_text(encoding="utf-8"))
        except ParseError as error:
            raise SettingsError(f"{self.path}: not valid TOML ({error})") from None
        except OSError as error:
            raise SettingsError(f"cannot read {self.path}: {error.strerror}") from None

    def _write(self, document: tomlkit.TOMLDocument) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(tomlkit.dumps(document), encoding="utf-8")
        temporary.replace(self.path)


def default_document() -> tomlkit.TOMLDocument:
    """The first settings file: every setting at its default, each with its help as a comment."""
    document = tomlkit.document()
    document.add(
        tomlkit.comment("Nectar agent settings. Edit freely: comments are kept. `nectar config set` works too.")
    )
    document.add(tomlkit.comment("Secrets (tokens, swarm keys) never go here: they live in the system keyring."))
    current_group = None
    table = None
    for info in iter_settings():
        if info.group != current_group:
            if table is not None:
                document.add(tomlkit.nl())
            current_group, table = info.group, tomlkit.table()
            table.add(tomlkit.comment(info.group_title))
            document.add(info.group, table)
        table.add(tomlkit.comment(info.describe()))
        table.add(info.name, _toml_value(info.default))
    return document


def _toml_value(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
