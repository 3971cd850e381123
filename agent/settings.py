"""Every agent setting, declared once: group, default, unit, range and help.

The TOML file (``agent/settings_file.py``), the ``nectar run`` flags, the API's settings endpoints and the GUI's
settings form are all derived from these models; ``iter_settings()`` lists them with their metadata. TOML has no
null, so no setting is optional: "automatic" is spelled ``0``, ``""`` or ``"auto"`` as each help text says.

Imports neither torch nor the engine: the GUI reads this module.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MODEL = "smollm2-135m"  # engine.weights.DEFAULT_MODEL; not imported, so that the GUI never loads the engine
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WINDOW = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def setting(default: Any, help: str, unit: str = "", **constraints: Any) -> Any:
    """A setting's ``Field``: ``help`` and ``unit`` travel in the field's metadata for the CLI, file and GUI."""
    extra = {"unit": unit} if unit else {}
    if isinstance(default, list):
        return Field(default_factory=lambda: list(default), description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class Group(BaseModel):
    """A section of the TOML file and of the settings form; its ``title`` names it for people."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SwarmSettings(Group):
    model_config = ConfigDict(title="Swarm")

    name: str = setting(
        "local",
        "'local': a swarm on this machine serving the embedded model with this agent's servers (works offline); "
        "any other name: a swarm joined through initial_peers",
        min_length=1,
    )
    model: str = setting(DEFAULT_MODEL, "model to serve: an alias, a model directory or a .gguf file", min_length=1)
    initial_peers: list[str] = setting([], "multiaddrs of the swarm's DHT peers (not used by the local swarm)")
    dht_prefix: str = setting("", "the swarm's name for the model ('': derived from the model)")
    local_servers: int = setting(1, "servers this agent runs in the local swarm", ge=1, le=8)
    host: str = setting(
        "auto",
        "address the server listens on for peers (auto: 127.0.0.1 in the local swarm, every interface (0.0.0.0) "
        "in a named swarm)",
        min_length=1,
    )
    port: int = setting(
        0, "TCP port of the server (0: any free port); fix it to forward it on your router", ge=0, le=65535
    )
    announce_host: str = setting(
        "", "public address peers dial, when your router forwards the port to this machine ('': found by libp2p)"
    )
    announce_port: int = setting(0, "public port peers dial, if the router maps another (0: the same)", ge=0, le=65535)

    def listen_host(self) -> str:
        """The address the server listens on: loopback for the local swarm unless set otherwise."""
        if self.host != "auto":
            return self.host
        return "127.0.0.1" if self.name == "local" else "0.0.0.0"


class ComputeSettings(Group):
    model_config = ConfigDict(title="Computing")

    device: str = setting("auto", "torch device: auto (the first GPU if any, else cpu), cpu, cuda:0, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting("auto", "number format of the weights")
    memory_budget_gb: float = setting(
        0.0, "memory for blocks and attention caches while the owner is away (0: automatic)", "GiB", ge=0, le=4096
    )
    memory_active_gb: float = setting(
        0.0,
        "memory the server may keep while the owner is active; a server holding more is paused instead of "
        "reduced (0: no limit)",
        "GiB",
        ge=0,
        le=4096,
    )
    threads_idle: int = setting(0, "compute threads while the owner is away (0: all cores)", "threads", ge=0, le=1024)
    threads_active: int = setting(
        1, "compute threads while the owner is active (reduced mode)", "threads", ge=1, le=1024
    )
    duty_cycle_active: int = setting(
        50, "share of time the server computes for others while the owner is active (reduced mode)", "%", ge=1, le=100
    )
    benchmark_max_age_days: float = setting(
        7.0, "re-measure the machine at start when the cached benchmark is older than this", "days", ge=0, le=365
    )


class ActivitySettings(Group):
    model_config = ConfigDict(title="When to compute")

    idle_minutes: float = setting(
        3.0, "the owner counts as away after this long without keyboard or mouse input", "minutes", ge=0, le=1440
    )
    when_active: Literal["reduced", "paused"] = setting(
        "reduced", "what the agent lends while the owner is active: reduced (fewer threads, duty cycle) or nothing"
    )
    when_unknown: Literal["full", "reduced", "paused"] = setting(
        "full", "what to lend when no source can tell idle time (headless machines, unsupported desktops)"
    )
    pause_on_battery: bool = setting(True, "pause while the computer runs on battery")
    battery_min_percent: int = setting(
        0, "pause while the battery is below this level, even when charging (0: never)", "%", ge=0, le=100
    )
    other_cpu_percent_max: float = setting(
        50.0, "pause while other programs use more CPU than this (share of all cores; 100: never)", "%", ge=0, le=100
    )
    other_gpu_percent_max: float = setting(
        30.0, "pause while other programs keep the GPU busier than this (100: never)", "%", ge=0, le=100
    )
    exclusive_programs: list[str] = setting(
        [], "pause while any of these programs runs (process names, e.g. games or editors)"
    )
    resume_after_seconds: float = setting(
        30.0, "a pause reason must stay clear this long before the agent lends more again", "s", ge=0, le=3600
    )
    poll_seconds: float = setting(1.0, "how often activity is checked", "s", ge=0.1, le=60)
    idle_source: Literal["auto", "x11", "logind", "gnome", "windows", "macos", "none"] = setting(
        "auto", "where idle time comes from (auto: the first that works on this desktop)"
    )


class ScheduleSettings(Group):
    model_config = ConfigDict(title="Schedule")

    every_day: str = setting(
        "00:00-24:00",
        "hours to compute every day, HH:MM-HH:MM, several comma-separated; a window may pass midnight "
        "(22:00-07:00); 'off': never",
    )
    monday: str = setting("", "Monday's hours, like every_day ('': as every_day)")
    tuesday: str = setting("", "Tuesday's hours ('': as every_day)")
    wednesday: str = setting("", "Wednesday's hours ('': as every_day)")
    thursday: str = setting("", "Thursday's hours ('': as every_day)")
    friday: str = setting("", "Friday's hours ('': as every_day)")
    saturday: str = setting("", "Saturday's hours ('': as every_day)")
    sunday: str = setting("", "Sunday's hours ('': as every_day)")

    @field_validator("every_day", *WEEKDAYS)
    @classmethod
    def _check_windows(cls, value: str) -> str:
        parse_windows(value)
        return value.strip()


class ApiSettings(Group):
    model_config = ConfigDict(title="Control API")

    host: str = setting(
        "127.0.0.1", "address the API listens on; anything but 127.0.0.1 lets other machines reach it (with the token)"
    )
    port: int = setting(9317, "TCP port of the API (0: any free port)", ge=0, le=65535)


class ChatSettings(Group):
    model_config = ConfigDict(title="Chat")

    max_concurrent: int = setting(
        4, "chat requests (chat window, local OpenAI API) answered at once; more are answered 'busy'", ge=1, le=64
    )
    wait_seconds: float = setting(
        30.0,
        "longest a chat request waits for the swarm (loading the model, blocks not served yet, a server that does "
        "not answer) before it is answered with an error naming the missing blocks",
        "s",
        ge=1,
        le=3600,
    )
    default_max_tokens: int = setting(
        512,
        "longest answer when a request sets no max_tokens (the model's context still limits it)",
        "tokens",
        ge=1,
        le=131072,
    )


class LogSettings(Group):
    model_config = ConfigDict(title="Logs")

    level: Literal["debug", "info", "warning", "error"] = setting("info", "how much the agent logs")
    max_mb: float = setting(10.0, "size at which a log file is rotated", "MiB", ge=0.1, le=1024)
    keep: int = setting(5, "rotated log files kept", "files", ge=1, le=100)


class DesktopSettings(Group):
    model_config = ConfigDict(title="Desktop")

    start_at_login: bool = setting(
        False, "start Nectar when this user logs in (the desktop's own login entry, see agent/autostart.py)"
    )


class Settings(BaseModel):
    """All settings; one attribute per TOML section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    swarm: SwarmSettings = Field(default_factory=SwarmSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    activity: ActivitySettings = Field(default_factory=ActivitySettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    desktop: DesktopSettings = Field(default_factory=DesktopSettings)

    def get(self, key: str) -> Any:
        group, name = split_key(key)
        return getattr(getattr(self, group), name)

    def flat(self) -> dict[str, Any]:
        """``{"group.name": value}`` for every setting."""
        return {info.key: self.get(info.key) for info in iter_settings()}


@dataclass(frozen=True)
class SettingInfo:
    """What a form, a flag or a file comment needs to know about one setting."""

    key: str  # "group.name"
    group: str
    group_title: str
    name: str
    kind: str  # "bool", "int", "float", "str", "list", "choice"
    default: Any
    help: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: help, unit, range and choices."""
        parts = [self.help]
        if self.unit:
            parts.append(f"unit: {self.unit}")
        if self.minimum is not None or self.maximum is not None:
            parts.append(f"range: {_number(self.minimum)} to {_number(self.maximum)}")
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        return "; ".join(parts)


def iter_settings() -> Iterator[SettingInfo]:
    """Every setting in declaration order, group by group."""
    for group, group_field in Settings.model_fields.items():
        model: type[BaseModel] = group_field.annotation
        title = model.model_config.get("title") or group
        for name, item in model.model_fields.items():
            minimum = maximum = None
            for constraint in item.metadata:
                if isinstance(constraint, annotated_types.Ge):
                    minimum = constraint.ge
                elif isinstance(constraint, annotated_types.Le):
                    maximum = constraint.le
            kind, choices = _kind(item.annotation)
            extra = item.json_schema_extra if isinstance(item.json_schema_extra, dict) else {}
            yield SettingInfo(
                key=f"{group}.{name}",
                group=group,
                group_title=title,
                name=name,
                kind=kind,
                default=item.get_default(call_default_factory=True),
                help=item.description or "",
                unit=str(extra.get("unit", "")),
                minimum=minimum,
                maximum=maximum,
                choices=choices,
            )


def setting_info(key: str) -> SettingInfo:
    for info in iter_settings():
        if info.key == key:
            return info
    raise KeyError(key)


def split_key(key: str) -> tuple[str, str]:
    """``"compute.threads_active"`` -> ("compute", "threads_active"); a clear error for a key that does not exist."""
    group, _, name = key.partition(".")
    model = Settings.model_fields.get(group)
    if not name or model is None or name not in model.annotation.model_fields:
        raise UnknownSettingError(key)
    return group, name


class UnknownSettingError(KeyError):
    def __str__(self) -> str:
        return f"unknown setting {self.args[0]!r} (see `nectar config get` for the list)"


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"09:00-12:00, 22:00-07:00"`` -> minutes since midnight ``[(540, 720), (1320, 420)]``; 'off' -> []."""
    text = text.strip()
    if text in ("", "off"):
        return []
    windows = []
    for part in text.split(","):
        match = _WINDOW.match(part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not HH:MM-HH:MM")
        start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
        start, end = start_h * 60 + start_m, end_h * 60 + end_m
        if start > 24 * 60 or end > 24 * 60:
            raise ValueError(f"{part.strip()!r}: hours go up to 24:00")
        if start == end:
            raise ValueError(f"{part.strip()!r} is an empty window")
        windows.append((start, end))
    return windows


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    if typing.get_origin(annotation) is Literal:
        return "choice", tuple(str(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return "list", ()
    if isinstance(annotation, types.UnionType):
        raise TypeError("settings are never optional: TOML has no null")
    return annotation.__name__, ()


def _number(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)
