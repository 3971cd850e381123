"""The agent process: one per data directory; settings, API, and the parts that lend the machine.

``Agent.start()`` takes the data directory's lock (a second agent is told where the first one's API is), loads
the settings, opens the API on 127.0.0.1 and publishes its address; ``Agent.run()`` waits for SIGTERM, Ctrl-C
or the API's stop; ``Agent.close()`` stops every part in reverse order (the server drains first).
Parts (the supervisor, the activity loop, ...) are objects with ``start()`` and ``stop()``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import filelock
from fastapi import APIRouter

from agent import autostart
from agent.activity.base import IdleSource
from agent.activity.choose import choose_idle_source
from agent.activity.monitor import ActivityMonitor
from agent.api.app import create_app
from agent.api.auth import load_or_create_token
from agent.api.server import ApiAddress, ApiServer, unpublish
from agent.benchmark import BenchmarkCache
from agent.chat.service import ChatService
from agent.lending import Lender
from agent.logs import RedactingFilter, remove_agent_logging, setup_agent_logging
from agent.paths import AgentPaths, write_private
from agent.secrets import KNOWN_SECRETS, SecretStore
from agent.settings import Settings
from agent.settings_file import LoadedSettings, SettingsFile, with_overrides
from agent.state import AgentState
from agent.stats import StatsDB
from agent.swarm_watch import SwarmWatcher

logger = logging.getLogger(__name__)


class AlreadyRunning(RuntimeError):
    """Another agent holds this data directory."""


class Part(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def load_settings(paths: AgentPaths, overrides: dict[str, Any] | None = None) -> LoadedSettings:
    """The file's settings, with ``{"group.name": value}`` overrides (command-line flags, not saved) on top."""
    loaded = SettingsFile(paths.config_file).load()
    return LoadedSettings(with_overrides(loaded.settings, overrides or {}), loaded.warnings)


class Agent:
    """Composition root of a running agent."""

    def __init__(
        self,
        paths: AgentPaths | None = None,
        overrides: dict[str, Any] | None = None,
        extra_routers: Sequence[APIRouter] = (),
        log_to_stderr: bool = True,
        lend: bool = True,
        idle_source_factory: Callable[[str], IdleSource] | None = None,
        child_env: dict[str, str] | None = None,
    ):
        """``lend=False``: settings and API only (tests of the API); ``idle_source_factory`` and ``child_env``
        replace the idle-time source and add environment variables for the child processes (tests)."""
        self.paths = (paths or AgentPaths.default()).create()
        self.overrides, self.extra_routers, self.log_to_stderr = overrides or {}, extra_routers, log_to_stderr
        self.lend, self.idle_source_factory, self.child_env = lend, idle_source_factory, child_env
        self.stats: StatsDB | None = None
        self.lender: Lender | None = None
        self.monitor: ActivityMonitor | None = None
        self.state: AgentState | None = None
        self.api: ApiServer | None = None
        self.chat: ChatService | None = None
        self.parts: list[Part] = []
        self.redact: RedactingFilter | None = None
        self._lock = filelock.FileLock(str(self.paths.lock_file), timeout=0)

    def start(self) -> Agent:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            address = ApiAddress.read(self.paths.api_file)
            where = f", its API is at {address.url} (pid {address.pid})" if address else ""
            raise AlreadyRunning(f"an agent is already running for {self.paths.data_dir}{where}") from None
        try:
            loaded = load_settings(self.paths, self.overrides)
            logs = loaded.settings.logs
            self.redact = setup_agent_logging(
                self.paths.agent_log, logs.level, logs.max_mb, logs.keep, self.log_to_stderr
            )
            for warning in loaded.warnings:
                logger.warning("%s", warning)
            self.state = AgentState(self.paths, loaded, self.overrides)
            self.state.settings_listeners.append(self._apply_start_at_login)
            token = load_or_create_token(self.paths.token_file)
            self.chat = ChatService(self.paths, self.state, self._chat_peers)
            app = create_app(self.state, token, [*self.chat.routers(), *self.extra_routers])
            api = loaded.settings.api
            self.api = ApiServer(app, api.host, api.port).start()
            self.api.publish(self.paths.api_file, self.paths.token_file)
            self.stats = StatsDB(self.paths.stats_db)
            self.state.stats = self.stats
            self.state.benchmark = BenchmarkCache(self.paths, lambda: self.state.settings, self._swarm_peers)
            self.state.evaluate()
            if self.lend:
                self._add_lending_parts()
            self.parts.append(self.chat)  # stopped first: its sessions end before the servers drain
            for part in self.parts:
                part.start()
            if self.lend:
                self._benchmark_if_stale()
        except BaseException:
            self.close()
            raise
        logger.info("agent started: data in %s, API at %s", self.paths.data_dir, self.api.url)
        return self

    def _apply_start_at_login(self, old: Settings, new: Settings) -> None:
        try:
            autostart.on_settings_changed(old, new)
        except OSError as error:
            self.state.record_error(f"could not change the start-at-login entry: {error}")

    def add_part(self, part: Part) -> None:
        self.parts.append(part)

    def _swarm_peers(self) -> list[str]:
        return list(self.lender.initial_peers) if self.lender is not None else []

    def _chat_peers(self) -> list[str]:
        """The chat's swarm: the local swarm's DHT when this agent runs it, else the configured peers."""
        return self._swarm_peers() or list(self.state.settings.swarm.initial_peers)

    def _benchmark_if_stale(self) -> None:
        """At start, without a fresh cached result: measure in the background (the API answers meanwhile)."""
        cache = self.state.benchmark
        if cache is None or cache.is_fresh():
            return

        def measure() -> None:
            try:
                cache.measure()
                logger.info("benchmark cached in %s", self.paths.benchmark_file)
            except Exception as error:
                self.state.record_error(f"benchmark failed: {error}")

        threading.Thread(target=measure, name="nectar-benchmark", daemon=True).start()

    def _add_lending_parts(self) -> None:
        env = dict(self.child_env or {})
        secrets = SecretStore(self.paths.secrets_file)
        for name in KNOWN_SECRETS:
            try:
                value = secrets.get(name)
            except Exception as error:  # a broken keyring must not stop the agent; it says which secret is missing
                self.state.record_error(f"cannot read the {KNOWN_SECRETS[name]}: {type(error).__name__}")
                continue
            self.redact.add(value)
            if name == "hf_token" and value:
                env["HF_TOKEN"] = value  # for gated models; never logged (the filter replaces it with ***)
            if name == "swarm_key":
                self._write_swarm_key(value)
        self.lender = Lender(self.state, self.stats, env, self.redact)
        factory = self.idle_source_factory or choose_idle_source
        self.monitor = ActivityMonitor(self.state, self.lender.own_pids, self.lender.server_memory_gb, factory)
        self.parts += [self.monitor, self.lender]  # the first mode is known before the server starts; it drains first
        self.parts.append(SwarmWatcher(self.state, self._swarm_peers))  # after the lender: it knows the peers

    def _write_swarm_key(self, value: str | None) -> None:
        """The key file the agent's DHT node, servers and client use; none (an open swarm) without the secret."""
        from engine.swarm_key import SwarmKeyError, swarm_key_text

        path = self.paths.swarm_key_file
        if not value:
            path.unlink(missing_ok=True)
            return
        try:
            text = swarm_key_text(value)
        except SwarmKeyError as error:
            path.unlink(missing_ok=True)
            self.state.record_error(f"the private swarm key is unusable: {error}")
            return
        write_private(path, text)

    def run(self) -> None:
        """Block until SIGTERM, SIGINT or the API's stop (signal handlers only from the main thread)."""
        state = self.state
        if state is None:
            raise RuntimeError("start the agent first")
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: state.request_stop())
        while not state.stop_requested.wait(0.5):
            pass
        logger.info("stopping%s", f": {state.stop_reason}" if state.stop_reason else "")

    def close(self) -> None:
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception:  # one part failing to stop must not leave the others running
                logger.exception("stopping %s failed", type(part).__name__)
        if self.api is not None:
            unpublish(self.paths.api_file)
            self.api.stop()
            self.api = None
        self.parts.clear()
        if self.chat is not None:
            self.chat.close()  # after the API: no request can reach the store any more
            self.chat = None
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        if self._lock.is_locked:
            self._lock.release()
        if self.redact is not None:
            remove_agent_logging()
            self.redact = None

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
