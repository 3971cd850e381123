"""The control API through the shared client: every endpoint, the token, the error shape, 127.0.0.1 only."""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from agent_helpers import start_agent
from fastapi import APIRouter

from agent.api.endpoints import API_PREFIX, ENDPOINTS
from agent.api.models import BenchmarkAnswer, CpuInfo
from agent.benchmark import save
from agent.client import AgentApiError, AgentClient, AgentClientError, AgentNotRunning
from agent.service import Agent, AlreadyRunning


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    ping = APIRouter(prefix="/v1")
    ping.add_api_route("/ping", lambda: {"pong": True}, methods=["GET"])
    running = start_agent(tmp_path, extra_routers=[ping])
    yield running
    running.close()


@pytest.fixture
def client(agent: Agent) -> Iterator[AgentClient]:
    with AgentClient.connect(agent.paths) as connected:
        yield connected


def test_token_file_is_private_and_api_file_says_where(agent: Agent) -> None:
    assert stat.S_IMODE(agent.paths.token_file.stat().st_mode) == 0o600
    assert agent.api.url in agent.paths.api_file.read_text()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_missing_or_wrong_token_is_refused_and_changes_nothing(agent: Agent, headers: dict[str, str]) -> None:
    mode_before = agent.state.status().mode
    for endpoint in ENDPOINTS:
        response = httpx.request(endpoint.method, agent.api.url + API_PREFIX + endpoint.path, headers=headers, json={})
        assert response.status_code == 401, endpoint.name
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(agent.api.url + "/v1/ping", headers=headers).status_code == 401
    status = agent.state.status()
    assert status.mode == mode_before and not status.manual_pause and not agent.state.stop_requested.is_set()


def test_extra_routers_share_the_token(agent: Agent, client: AgentClient) -> None:
    token = agent.paths.token_file.read_text().strip()
    answer = httpx.get(agent.api.url + "/v1/ping", headers={"Authorization": f"Bearer {token}"})
    assert answer.json() == {"pong": True}


def test_pause_snooze_resume_through_the_client(client: AgentClient) -> None:
    assert client.status().mode == "full"
    paused = client.pause()
    assert paused.mode == "paused" and paused.manual_pause and "paused by you" in paused.reason
    resumed = client.resume()
    assert resumed.mode == "full" and not resumed.manual_pause
    snoozed = client.snooze(5)
    assert snoozed.mode == "paused" and snoozed.reason.startswith("snoozed until")
    assert snoozed.snoozed_until is not None and snoozed.snoozed_until - snoozed.since == pytest.approx(300, abs=2)
    assert client.resume().mode == "full"
    with pytest.raises(AgentClientError, match="greater than 0"):
        client.snooze(0)


def test_settings_get_and_set_validate_like_the_file(agent: Agent, client: AgentClient) -> None:
    answer = client.get_settings()
    assert answer.values["activity.idle_minutes"] == 3.0 and answer.file == str(agent.paths.config_file)
    changed = client.set_settings({"activity.idle_minutes": 10, "compute.threads_active": 2})
    assert changed.values["activity.idle_minutes"] == 10.0 and agent.state.settings.compute.threads_active == 2
    assert "idle_minutes = 10.0" in agent.paths.config_file.read_text()
    before = agent.paths.config_file.read_text()
    with pytest.raises(AgentApiError, match=r"compute.threads_active = -3") as error:
        client.set_settings({"compute.threads_active": -3})
    assert error.value.status_code == 400
    with pytest.raises(AgentApiError, match="unknown setting 'compute.turbo'"):
        client.set_settings({"compute.turbo": True})
    assert agent.paths.config_file.read_text() == before


def test_malformed_requests_get_one_line_errors_in_one_shape(agent: Agent) -> None:
    headers = {"Authorization": f"Bearer {agent.paths.token_file.read_text().strip()}"}
    for body in ({"minutes": "soon"}, {"minutes": 5, "extra": 1}, {}):
        response = httpx.post(agent.api.url + "/api/snooze", json=body, headers=headers)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    response = httpx.post(agent.api.url + "/api/snooze", content=b"{not json", headers=headers)
    assert response.status_code == 400


def test_logs_benchmark_and_stop(agent: Agent, client: AgentClient) -> None:
    logs = client.logs("agent", 50)
    assert logs.file == str(agent.paths.agent_log) and any("agent started" in line for line in logs.lines)
    assert client.logs("server", 5).lines == []
    assert client.get_benchmark().measured_at is None and "nectar bench" in client.get_benchmark().detail
    cached = BenchmarkAnswer(measured_at=time.time() - 90, cpu=CpuInfo(model="test cpu", cores=2))
    save(agent.paths, cached)
    answer = client.run_benchmark(refresh=False)  # a cached result is answered with its age, not re-measured
    assert answer.cpu.model == "test cpu" and answer.age_s == pytest.approx(90, abs=5)
    assert client.stop().ok and agent.state.stop_requested.is_set()


def test_listens_on_loopback_only(agent: Agent) -> None:
    assert agent.api.socket.getsockname()[0] == "127.0.0.1"
    others = [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    ]
    for address in others:
        with socket.socket() as probe, pytest.raises(OSError):
            probe.settimeout(2)
            probe.connect((address, agent.api.port))


def test_one_agent_per_data_directory(agent: Agent, tmp_path: Path) -> None:
    with pytest.raises(AlreadyRunning, match=f"already running .* its API is at {agent.api.url}"):
        start_agent(tmp_path)


def test_client_without_an_agent_says_how_to_start_one(tmp_path: Path) -> None:
    agent = start_agent(tmp_path)
    paths = agent.paths
    agent.close()
    assert not paths.api_file.exists()
    with pytest.raises(AgentNotRunning, match="nectar run --no-gui"):
        AgentClient.connect(paths)
