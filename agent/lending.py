"""``Lender``: the part of the agent that lends the machine: its swarm, its server(s), and the mode applied to them.

- Swarm ``local``: the agent runs its own DHT node (identity key in the data directory, so its peer id and, with
  the port it remembers, its address stay the same across restarts) and ``swarm.local_servers`` servers of the
  model; a fresh install works offline. A named swarm: one server joining ``swarm.initial_peers``.
- Modes (from the policy, through ``AgentState``'s listeners): ``full`` and ``reduced`` keep the server running and
  write its throttle file (threads, duty cycle, announced throughput: see ``engine/server/control.py``);
  ``paused`` drains the server and lets it exit, which frees its memory, GPU memory included.
- Every second it reads each server's status file: sessions, span, announced throughput, and the tokens and
  sessions it computed, which go to the statistics database, with the time spent online and in each mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path

import psutil

from agent.hardware import resolve_device
from agent.logs import rotating_handler
from agent.paths import write_private
from agent.settings import Settings
from agent.state import AgentState
from agent.stats import StatsDB
from agent.supervisor import ChildEvent, Supervisor
from agent.throttle import Decision

logger = logging.getLogger(__name__)

TICK_SECONDS = 1.0
VIEW_SECONDS = 30.0
DHT_START_TIMEOUT = 120.0


class Lender:
    def __init__(
        self,
        state: AgentState,
        stats: StatsDB,
        env: dict[str, str] | None = None,
        redact: logging.Filter | None = None,
    ):
        self.state, self.stats, self.paths = state, stats, state.paths
        self.env, self.redact = env or {}, redact
        self.dht: Supervisor | None = None
        self.servers: list[Supervisor] = []
        self.initial_peers: list[str] = []
        self._counted: dict[int, tuple[int, int, int]] = {}  # server index -> (pid, tokens, sessions) counted
        self._server_log = _child_logger("nectar.server", self.paths.server_log, state.settings, redact)
        self._stop = threading.Event()
        self._applying = threading.Lock()
        self._ticker = threading.Thread(target=self._tick_forever, name="nectar-lender", daemon=True)
        self._viewer = threading.Thread(target=self._view_forever, name="nectar-swarm-view", daemon=True)
        self._device = "cpu"

    # lifecycle
    def start(self) -> None:
        settings = self.state.settings
        local = settings.swarm.name == "local"
        if local:
            self.initial_peers = self._start_local_dht(settings)
        else:
            self.initial_peers = list(settings.swarm.initial_peers)
            if not self.initial_peers:
                raise ValueError(f"swarm {settings.swarm.name!r} needs swarm.initial_peers (or use swarm.name local)")
        self.state.update_swarm(name=settings.swarm.name, model=settings.swarm.model, initial_peers=self.initial_peers)
        count = settings.swarm.local_servers if local else 1
        device = resolve_device(settings.compute.device)
        for index in range(count):
            supervisor = Supervisor(
                f"server{index}" if count > 1 else "server",
                self._server_args(settings, index, device),
                self._server_log,
                lambda event, index=index: self._on_server_event(index, event),
                env=self.env,
                stop_timeout=60.0,
            )
            self.servers.append(supervisor)
            supervisor.start()
        self._device = device
        self.state.mode_listeners.append(self.apply)
        self.state.settings_listeners.append(self._settings_changed)
        self.apply(Decision(self.state.throttle.mode, self.state.throttle.reason, self.state.throttle))
        self._ticker.start()
        self._viewer.start()

    def stop(self) -> None:
        if self.apply in self.state.mode_listeners:
            self.state.mode_listeners.remove(self.apply)
        if self._settings_changed in self.state.settings_listeners:
            self.state.settings_listeners.remove(self._settings_changed)
        self._stop.set()
        threads = [threading.Thread(target=server.stop) for server in self.servers]  # drain all at once
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.dht is not None:
            self.dht.stop()
        if self._ticker.is_alive():
            self._ticker.join(5)
        self._tick()  # count the last tokens

    # modes
    def apply(self, decision: Decision) -> None:
        """Carry out a mode: a throttle file for full and reduced, a drain for paused (one decision at a time)."""
        with self._applying:
            self._apply(decision)

    def _apply(self, decision: Decision) -> None:
        compute = self.state.settings.compute
        if decision.mode == "paused":
            for server in self.servers:
                server.want_running(False)
            return
        if decision.mode == "full":
            throttle = {"threads": compute.threads_idle, "duty_cycle": 1.0, "throughput_scale": 1.0}
        else:
            duty = compute.duty_cycle_active / 100
            full_threads = compute.threads_idle or psutil.cpu_count() or 1
            scale = duty * min(1.0, compute.threads_active / full_threads)
            throttle = {"threads": compute.threads_active, "duty_cycle": duty, "throughput_scale": round(scale, 4)}
        for index, server in enumerate(self.servers):
            write_private(self._control_dir(index) / "throttle.json", json.dumps(throttle))
            server.want_running(True)

    def _settings_changed(self, old: Settings, new: Settings) -> None:
        """Limits apply at once (a new throttle file); what a server reads at start restarts it (drained first)."""
        self.apply(Decision(self.state.throttle.mode, self.state.throttle.reason, self.state.throttle))
        if (old.swarm, old.compute.device) != (new.swarm, new.compute.device):
            logger.warning("swarm settings changed: they apply when the agent restarts")
            return
        device = resolve_device(new.compute.device)
        for index, server in enumerate(self.servers):
            args = self._server_args(new, index, device)
            if args != server.args:
                logger.info("restarting %s with the new settings", server.name)
                server.restart(args)

    def _view_forever(self) -> None:
        """Every ``VIEW_SECONDS``, read the swarm's records: servers seen and the share of blocks covered."""
        from engine.records import default_dht_prefix
        from engine.swarm_view import read_view
        from engine.weights import resolve_model

        num_blocks = None
        while not self._stop.wait(VIEW_SECONDS):
            swarm = self.state.settings.swarm
            try:
                if num_blocks is None:
                    num_blocks = resolve_model(swarm.model).config.num_hidden_layers
                prefix = swarm.dht_prefix or default_dht_prefix(swarm.model)
                view = read_view(self.initial_peers, prefix, num_blocks, swarm_key=self.paths.swarm_key())
            except Exception as error:  # an unreachable swarm is shown as unknown, never a crash
                logger.info("could not read the swarm: %s", error)
                self.state.update_swarm(servers=None, coverage=None)
                continue
            covered = 1 - len(view.uncovered) / view.num_blocks
            self.state.update_swarm(servers=view.num_servers, coverage=covered)

    # observations for the policy and the status
    def own_pids(self) -> set[int]:
        pids = set()
        for child in [*self.servers, *([self.dht] if self.dht else [])]:
            if child.running:
                pids.add(child.process.pid)
        return pids

    def server_memory_gb(self) -> float | None:
        total = 0.0
        found = False
        for server in self.servers:
            if server.running:
                try:
                    total += psutil.Process(server.process.pid).memory_info().rss / 2**30
                    found = True
                except psutil.Error:
                    continue
        return total if found else None

    # internals
    def _start_local_dht(self, settings: Settings) -> list[str]:
        remembered = self.paths.data_dir / "local-dht.json"
        port = 0
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            port = int(json.loads(remembered.read_text())["port"])
        args = ["dht", "--host", "127.0.0.1", "--port", str(port), "--identity-path", str(self.paths.identity_file)]
        args += self._swarm_key_args()
        dht_log = _child_logger("nectar.dht", self.paths.dht_log, settings, self.redact)
        self.dht = Supervisor("dht", args, dht_log)
        self.dht.want_running(True)
        self.dht.start()
        ready = self.dht.wait_ready(DHT_START_TIMEOUT)
        if ready is None and port:  # the remembered port is taken: take any
            self.dht.stop()
            args[4] = "0"
            self.dht = Supervisor("dht", args, self.dht.log)
            self.dht.want_running(True)
            self.dht.start()
            ready = self.dht.wait_ready(DHT_START_TIMEOUT)
        if ready is None:
            raise RuntimeError("the local swarm's DHT node did not start:\n" + "\n".join(self.dht.output))
        maddrs = list(ready["maddrs"])
        bound = int(maddrs[0].split("/tcp/")[1].split("/")[0])
        write_private(remembered, json.dumps({"port": bound}))
        return maddrs

    def _control_dir(self, index: int) -> Path:
        directory = self.paths.data_dir / "servers" / str(index)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _server_args(self, settings: Settings, index: int, device: str) -> list[str]:
        swarm, compute = settings.swarm, settings.compute
        args = [
            "serve",
            swarm.model,
            "--initial-peers",
            *self.initial_peers,
            "--control-dir",
            str(self._control_dir(index)),
        ]
        args += ["--host", swarm.listen_host(), "--port", str(swarm.port if index == 0 else 0), "--device", device]
        if swarm.announce_host and index == 0:  # the forwarded port belongs to the first server
            args += ["--announce-host", swarm.announce_host]
            args += ["--announce-port", str(swarm.announce_port)] if swarm.announce_port else []
        args += ["--dtype", compute.dtype]
        if swarm.dht_prefix:
            args += ["--dht-prefix", swarm.dht_prefix]
        if compute.memory_budget_gb:
            args += ["--memory-budget", str(compute.memory_budget_gb)]
        if compute.threads_idle:
            args += ["--num-threads", str(compute.threads_idle)]
        return args + self._swarm_key_args()

    def _swarm_key_args(self) -> list[str]:
        key = self.paths.swarm_key()
        return ["--swarm-key", key] if key else []

    def _on_server_event(self, index: int, event: ChildEvent) -> None:
        if event.state in ("stopped", "crashed"):
            self._tick()  # count its last status before a new server overwrites it
        if index != 0 and event.state != "failed":
            return  # the status shows the first server; a failure of any is worth showing
        fields: dict = {"state": event.state, "pid": event.pid, "restarts": event.restarts, "detail": event.detail}
        if event.ready:
            fields["peer_id"] = event.ready.get("peer_id")
            fields["blocks"] = tuple(event.ready.get("blocks", ())) or None
            fields["reachability"] = event.ready.get("reachability")
            fields["swarm_rtt_ms"] = event.ready.get("swarm_rtt_ms")
        if event.state in ("stopped", "crashed", "failed"):
            fields["sessions"] = 0
        self.state.update_server(**fields)
        if event.state == "crashed":
            self.state.record_error(f"the server crashed and is restarted ({event.detail})")
        if event.state == "failed":
            self.state.record_error(event.detail)
            self.state.stop_reason = event.detail

    def _tick_forever(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(TICK_SECONDS):
            now = time.monotonic()
            self._account(now - last)
            last = now
            try:
                self._tick()
            except Exception:  # statistics must never stop the agent
                logger.exception("reading the server status failed")

    def _account(self, seconds: float) -> None:
        self.stats.add_time("agent", seconds)
        self.stats.add_time(self.state.mode, seconds)
        if any(server.running for server in self.servers):
            self.stats.add_time("server", seconds)

    def _tick(self) -> None:
        for index, server in enumerate(self.servers):
            try:
                status = json.loads((self._control_dir(index) / "status.json").read_text())
            except (OSError, ValueError):
                continue
            pid, tokens, sessions = (
                int(status.get("pid", 0)),
                int(status["tokens_computed"]),
                int(status["sessions_computed"]),
            )
            counted_pid, counted_tokens, counted_sessions = self._counted.get(index, (pid, 0, 0))
            if counted_pid != pid:
                counted_tokens = counted_sessions = 0
            self.stats.add_served(tokens - counted_tokens, sessions - counted_sessions)
            self._counted[index] = (pid, tokens, sessions)
            if index == 0 and server.running and server.process.pid == pid:
                self.state.update_server(
                    sessions=int(status.get("sessions_open", 0)),
                    throughput=float(status.get("throughput", 0.0)),
                    blocks=(int(status["start"]), int(status["end"])),
                )


def _child_logger(name: str, path: Path, settings: Settings, redact: logging.Filter | None) -> logging.Logger:
    """A logger writing only to its own rotating file (a child's output), not to the agent's log."""
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = rotating_handler(path, settings.logs.max_mb, settings.logs.keep)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if redact is not None:
        handler.addFilter(redact)
    log.addHandler(handler)
    return log
