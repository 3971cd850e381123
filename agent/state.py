"""``AgentState``: what the running agent knows, and its answers to the control API (``AgentControl``).

Shared between the API's threads, the activity loop and the supervisor, behind one lock. The mode comes from
the pure policy (``agent/throttle.py``); pause, resume and snooze change the policy's state and re-decide at
once, so the answer already shows the new mode. Whoever acts on a mode (the supervisor) registers a listener.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from agent.api.endpoints import ControlError
from agent.api.models import (
    Ack,
    BenchmarkAnswer,
    BenchmarkRequest,
    Contribution,
    ContributionDay,
    ContributionQuery,
    ErrorEntry,
    LogsAnswer,
    LogsQuery,
    PauseRequest,
    SecretChange,
    SecretInfo,
    SecretsAnswer,
    ServerStatus,
    SettingsAnswer,
    SettingsChange,
    SnoozeRequest,
    Status,
    SwarmMap,
    SwarmStatus,
)
from agent.logs import tail_lines
from agent.paths import AgentPaths
from agent.secrets import KNOWN_SECRETS, SecretStore
from agent.settings import Settings, UnknownSettingError
from agent.settings_file import LoadedSettings, SettingsFile
from agent.throttle import Decision, Observations, ThrottleState, decide

logger = logging.getLogger(__name__)

ModeListener = Callable[[Decision], None]
SettingsListener = Callable[[Settings, Settings], None]


class BenchmarkProvider(Protocol):
    def cached(self) -> BenchmarkAnswer: ...
    def measure(self) -> BenchmarkAnswer: ...


class StatsProvider(Protocol):
    def totals(self) -> tuple[int, int]: ...  # tokens served, sessions served
    def hours(self) -> dict[str, float]: ...
    def days(self, count: int) -> list[tuple[str, int, int, float, float]]: ...


class SwarmMapProvider(Protocol):
    map: SwarmMap  # the last reading


class AgentState:
    """The agent's state and its control methods (one per row of ``ENDPOINTS``)."""

    def __init__(self, paths: AgentPaths, loaded: LoadedSettings, clock: Callable[[], float] = time.time):
        self.paths, self.clock = paths, clock
        self.settings_file = SettingsFile(paths.config_file)
        self.settings = loaded.settings
        self.warnings = list(loaded.warnings)
        self.started = clock()
        self.throttle = ThrottleState(since=self.started)
        self.observations: Observations | None = None
        self.server = ServerStatus()
        self.swarm = SwarmStatus(name=self.settings.swarm.name, model=self.settings.swarm.model)
        self.errors: collections.deque[ErrorEntry] = collections.deque(maxlen=20)
        self.stop_reason: str | None = None
        self.stop_requested = threading.Event()
        self.mode_listeners: list[ModeListener] = []
        self.settings_listeners: list[SettingsListener] = []
        self.benchmark: BenchmarkProvider | None = None
        self.stats: StatsProvider | None = None
        self.swarm_watcher: SwarmMapProvider | None = None
        self.secret_store = SecretStore(paths.secrets_file)
        self._owner_requests = 0
        self._lock = threading.RLock()

    # the policy
    def evaluate(self, observations: Observations | None = None) -> Decision:
        """Decide the mode from the newest observations; listeners hear of every change of mode or reason."""
        with self._lock:
            if observations is not None:
                self.observations = observations
            now = self.clock()
            current = self.observations if self.observations is not None else Observations.at(now)
            snapshot = dataclasses.replace(current, now=now, owner_requests=self._owner_requests)
            previous = self.throttle
            decision = decide(snapshot, self.settings, previous)
            self.throttle = decision.next_state
        if (decision.mode, decision.reason) != (previous.mode, previous.reason):
            if decision.mode != previous.mode:
                logger.info("mode %s -> %s: %s", previous.mode, decision.mode, decision.reason)
            for listener in list(self.mode_listeners):
                listener(decision)
        return decision

    @contextlib.contextmanager
    def owner_request(self) -> Iterator[None]:
        """Wrap the owner's own generation (chat window, local API): the agent lends at full speed meanwhile.

        Throttling limits what is lent to others; the owner's request is what they asked for, so it is never
        reduced (pauses for battery, schedule and the like still apply, see ``agent/throttle.py``).
        """
        with self._lock:
            self._owner_requests += 1
        self.evaluate()
        try:
            yield
        finally:
            with self._lock:
                self._owner_requests -= 1
            self.evaluate()

    @property
    def mode(self) -> str:
        return self.throttle.mode

    def record_error(self, message: str) -> None:
        logger.error("%s", message)
        with self._lock:
            self.errors.append(ErrorEntry(time=self.clock(), message=message))

    def update_server(self, **fields: object) -> None:
        with self._lock:
            self.server = self.server.model_copy(update=fields)

    def update_swarm(self, **fields: object) -> None:
        with self._lock:
            self.swarm = self.swarm.model_copy(update=fields)

    def request_stop(self, reason: str | None = None) -> None:
        if reason is not None:
            self.stop_reason = reason
        self.stop_requested.set()

    # AgentControl
    def status(self) -> Status:
        with self._lock:
            throttle = self.throttle
            tokens, sessions = self.stats.totals() if self.stats is not None else (0, 0)
            return Status(
                mode=throttle.mode,
                reason=throttle.reason,
                since=throttle.since,
                manual_pause=throttle.manual_pause,
                snoozed_until=throttle.snoozed_until,
                server=self.server,
                swarm=self.swarm,
                tokens_served=tokens,
                sessions_served=sessions,
                uptime_s=self.clock() - self.started,
                pid=os.getpid(),
                stopping=self.stop_requested.is_set(),
                stop_reason=self.stop_reason,
                last_errors=list(self.errors),
                warnings=list(self.warnings),
            )

    def pause(self, request: PauseRequest | None = None) -> Status:
        with self._lock:
            self.throttle = dataclasses.replace(self.throttle, manual_pause=True)
        self.evaluate()
        return self.status()

    def resume(self) -> Status:
        with self._lock:
            self.throttle = dataclasses.replace(self.throttle, manual_pause=False, snoozed_until=None)
        self.evaluate()
        return self.status()

    def snooze(self, request: SnoozeRequest) -> Status:
        with self._lock:
            until = self.clock() + request.minutes * 60
            self.throttle = dataclasses.replace(self.throttle, snoozed_until=until)
        self.evaluate()
        return self.status()

    def stop(self) -> Ack:
        self.request_stop()
        return Ack(ok=True, message="the agent drains its server and stops")

    def get_settings(self) -> SettingsAnswer:
        with self._lock:
            return SettingsAnswer(
                values=self.settings.flat(), file=str(self.settings_file.path), warnings=list(self.warnings)
            )

    def set_settings(self, request: SettingsChange) -> SettingsAnswer:
        if not request.changes:
            raise ControlError("no settings to change", param="changes")
        try:
            new = self.settings_file.update(request.changes)
        except UnknownSettingError as error:
            raise ControlError(str(error), param=str(error.args[0])) from None
        with self._lock:
            old, self.settings = self.settings, new
        logger.info("settings changed: %s", ", ".join(sorted(request.changes)))
        for listener in list(self.settings_listeners):
            listener(old, new)
        self.evaluate()
        return self.get_settings()

    def get_benchmark(self) -> BenchmarkAnswer:
        if self.benchmark is None:
            return BenchmarkAnswer(detail="this agent does not benchmark")
        return self.benchmark.cached()

    def run_benchmark(self, request: BenchmarkRequest) -> BenchmarkAnswer:
        if self.benchmark is None:
            raise ControlError("this agent does not benchmark", status_code=503)
        if not request.refresh:
            cached = self.benchmark.cached()
            if cached.measured_at is not None:
                return cached
        return self.benchmark.measure()

    def logs(self, request: LogsQuery) -> LogsAnswer:
        path = self.paths.agent_log if request.source == "agent" else self.paths.server_log
        return LogsAnswer(source=request.source, file=str(path), lines=tail_lines(path, request.lines))

    def swarm_map(self) -> SwarmMap:
        if self.swarm_watcher is None:
            return SwarmMap(name=self.swarm.name, model=self.swarm.model, detail="this agent does not lend")
        return self.swarm_watcher.map

    def contribution(self, request: ContributionQuery) -> Contribution:
        if self.stats is None:
            return Contribution()
        tokens, sessions = self.stats.totals()
        days = [
            ContributionDay(day=d, tokens=t, sessions=s, hours_online=o, hours_serving=h)
            for d, t, s, o, h in self.stats.days(request.days)
        ]
        return Contribution(days=days, tokens=tokens, sessions=sessions, hours=self.stats.hours())

    def secrets(self) -> SecretsAnswer:
        infos = []
        for name, description in KNOWN_SECRETS.items():
            where = self.secret_store.where(name)
            infos.append(
                SecretInfo(
                    name=name,
                    description=description,
                    present=where.present,
                    backend=where.backend,
                    detail=where.detail,
                )
            )
        return SecretsAnswer(secrets=infos)

    def set_secret(self, request: SecretChange) -> SecretsAnswer:
        if request.value is None:
            self.secret_store.delete(request.name)
        else:
            value = request.value.strip()
            if not value:
                raise ControlError(f"the {KNOWN_SECRETS[request.name]} is empty", param="value")
            self.secret_store.set(request.name, value)
        logger.info("secret %s %s", request.name, "deleted" if request.value is None else "stored")
        return self.secrets()
