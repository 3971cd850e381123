"""The one table of the control API: each endpoint's path, method, whether it changes state, and its types.

The FastAPI app (``app.py``) and the client (``agent/client.py``) are both built from ``ENDPOINTS``, so the two
can never disagree about a path or a type. ``AgentControl`` is what the running agent implements: one method per
endpoint, named like it, taking the request model (or nothing) and returning the answer model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel

from agent.api.models import (
    Ack,
    BenchmarkAnswer,
    BenchmarkRequest,
    Contribution,
    ContributionQuery,
    LogsAnswer,
    LogsQuery,
    PauseRequest,
    SecretChange,
    SecretsAnswer,
    SettingsAnswer,
    SettingsChange,
    SnoozeRequest,
    Status,
    SwarmMap,
)

API_PREFIX = "/api"


@dataclass(frozen=True)
class Endpoint:
    name: str  # the AgentControl method and the client method
    method: Literal["GET", "POST", "PUT"]
    path: str
    changes_state: bool
    request: type[BaseModel] | None  # GET: query parameters; otherwise: the JSON body
    answer: type[BaseModel]
    summary: str


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("status", "GET", "/status", False, None, Status, "mode, reason, server, swarm, statistics, errors"),
    Endpoint("pause", "POST", "/pause", True, PauseRequest, Status, "drain and stop the server until resumed"),
    Endpoint("resume", "POST", "/resume", True, None, Status, "end a manual pause or snooze; follow the policy"),
    Endpoint("snooze", "POST", "/snooze", True, SnoozeRequest, Status, "pause for some minutes, then resume"),
    Endpoint("stop", "POST", "/stop", True, None, Ack, "drain the server and stop the agent"),
    Endpoint("get_settings", "GET", "/settings", False, None, SettingsAnswer, "every setting's current value"),
    Endpoint("set_settings", "PUT", "/settings", True, SettingsChange, SettingsAnswer, "change settings, validated"),
    Endpoint("get_benchmark", "GET", "/benchmark", False, None, BenchmarkAnswer, "the cached benchmark and its age"),
    Endpoint("run_benchmark", "POST", "/benchmark", True, BenchmarkRequest, BenchmarkAnswer, "measure the machine"),
    Endpoint("logs", "GET", "/logs", False, LogsQuery, LogsAnswer, "the last lines of the agent's or server's log"),
    Endpoint("swarm_map", "GET", "/swarm", False, None, SwarmMap, "who serves which blocks (the coverage plot)"),
    Endpoint("contribution", "GET", "/contribution", False, ContributionQuery, Contribution, "lent per day"),
    Endpoint("secrets", "GET", "/secrets", False, None, SecretsAnswer, "which secrets are set and where, no values"),
    Endpoint("set_secret", "PUT", "/secrets", True, SecretChange, SecretsAnswer, "store or delete a secret"),
)

ENDPOINTS_BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}


class AgentControl(Protocol):
    """What a running agent offers the API (``agent/state.py`` implements it)."""

    def status(self) -> Status: ...
    def pause(self, request: PauseRequest) -> Status: ...
    def resume(self) -> Status: ...
    def snooze(self, request: SnoozeRequest) -> Status: ...
    def stop(self) -> Ack: ...
    def get_settings(self) -> SettingsAnswer: ...
    def set_settings(self, request: SettingsChange) -> SettingsAnswer: ...
    def get_benchmark(self) -> BenchmarkAnswer: ...
    def run_benchmark(self, request: BenchmarkRequest) -> BenchmarkAnswer: ...
    def logs(self, request: LogsQuery) -> LogsAnswer: ...
    def swarm_map(self) -> SwarmMap: ...
    def contribution(self, request: ContributionQuery) -> Contribution: ...
    def secrets(self) -> SecretsAnswer: ...
    def set_secret(self, request: SecretChange) -> SecretsAnswer: ...


class ControlError(Exception):
    """An expected refusal (bad value, nothing to do); the API answers ``status_code`` with the one-line message."""

    def __init__(self, message: str, status_code: int = 400, param: str | None = None):
        super().__init__(message)
        self.status_code, self.param = status_code, param
