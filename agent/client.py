"""``AgentClient``: the one typed client of the control API, shared by the CLI and the GUI.

Built from the endpoint table, so it never disagrees with the server about a path or a type. Imports neither
torch nor the engine (the GUI uses it). Synchronous, with timeouts: call it off the GUI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, ValidationError

from agent.api.endpoints import API_PREFIX, ENDPOINTS_BY_NAME
from agent.api.models import (
    Ack,
    BenchmarkAnswer,
    BenchmarkRequest,
    Contribution,
    ContributionQuery,
    LogsAnswer,
    LogSource,
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
from agent.api.server import ApiAddress
from agent.paths import AgentPaths

DEFAULT_TIMEOUT = 10.0
BENCHMARK_TIMEOUT = 900.0  # a benchmark loads the model and measures it


class AgentClientError(Exception):
    """A one-line reason a call failed (shown as is by the CLI and the GUI)."""


class AgentNotRunning(AgentClientError):
    pass


class AgentApiError(AgentClientError):
    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


class AgentClient:
    """``AgentClient.connect()`` finds the running agent of this data directory through its ``api.json``."""

    def __init__(self, url: str, token: str, timeout: float = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    @classmethod
    def connect(cls, paths: AgentPaths | None = None, timeout: float = DEFAULT_TIMEOUT) -> AgentClient:
        paths = paths or AgentPaths.default()
        address = ApiAddress.read(paths.api_file)
        if address is None:
            raise AgentNotRunning(f"no agent is running for {paths.data_dir} (start one with `nectar run --no-gui`)")
        if not _alive(address.pid):
            raise AgentNotRunning(f"the agent (pid {address.pid}) is not running; start it with `nectar run --no-gui`")
        try:
            token = Path(address.token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise AgentClientError(f"cannot read the API token {address.token_file}: {error.strerror}") from None
        return cls(address.url, token, timeout)

    def close(self) -> None:
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # one method per endpoint
    def status(self, timeout: float | None = None) -> Status:
        return self._call("status", timeout=timeout)

    def pause(self) -> Status:
        return self._call("pause", PauseRequest())

    def resume(self) -> Status:
        return self._call("resume")

    def snooze(self, minutes: float) -> Status:
        return self._call("snooze", _request(SnoozeRequest, minutes=minutes))

    def stop(self) -> Ack:
        return self._call("stop")

    def get_settings(self) -> SettingsAnswer:
        return self._call("get_settings")

    def set_settings(self, changes: dict[str, Any]) -> SettingsAnswer:
        return self._call("set_settings", SettingsChange(changes=changes))

    def get_benchmark(self) -> BenchmarkAnswer:
        return self._call("get_benchmark")

    def run_benchmark(self, refresh: bool = True) -> BenchmarkAnswer:
        return self._call("run_benchmark", BenchmarkRequest(refresh=refresh), timeout=BENCHMARK_TIMEOUT)

    def logs(self, source: LogSource = "agent", lines: int = 100) -> LogsAnswer:
        return self._call("logs", _request(LogsQuery, source=source, lines=lines))

    def swarm_map(self) -> SwarmMap:
        return self._call("swarm_map")

    def contribution(self, days: int = 30) -> Contribution:
        return self._call("contribution", _request(ContributionQuery, days=days))

    def secrets(self) -> SecretsAnswer:
        return self._call("secrets")

    def set_secret(self, name: str, value: str | None) -> SecretsAnswer:
        """Store ``value`` as the secret ``name`` (``None`` deletes it)."""
        return self._call("set_secret", _request(SecretChange, name=name, value=value))

    def _call(self, name: str, request: BaseModel | None = None, timeout: float | None = None) -> Any:
        endpoint = ENDPOINTS_BY_NAME[name]
        options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        payload = request.model_dump(mode="json") if request is not None else None
        if endpoint.method == "GET":
            options["params"] = payload
        elif payload is not None:
            options["json"] = payload
        return endpoint.answer.model_validate(self._send(endpoint.method, endpoint.path, **options).json())

    def _send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """One request; a dead agent, a timeout and an error answer each become this client's own error."""
        try:
            response = self._http.request(method, url, **options)
        except httpx.ConnectError:
            raise AgentNotRunning(f"the agent's API at {self.url} does not answer; is the agent running?") from None
        except httpx.TimeoutException:
            raise AgentClientError(f"the agent's API at {self.url} did not answer in time") from None
        if response.status_code != 200:
            raise AgentApiError(_error_message(response), response.status_code)
        return response


def _request(model: type[BaseModel], **values: Any) -> BaseModel:
    """Validate a request here, so a bad argument is a one-line error before anything is sent."""
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors()[0]
        raise AgentClientError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"the agent answered {response.status_code}"


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid)  # not os.kill(pid, 0): on Windows that terminates the process
