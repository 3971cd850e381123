"""A swarm on this machine: one DHT node and server processes, started and stopped as a unit.

Used by ``nectar demo``, the tests and the benchmarks. Every child announces itself with one ``READY {json}``
line on stdout; every child dies with its parent (Linux parent-death signal), so an interrupted run never
leaves servers behind.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.executable import child_command

READY_PREFIX = "READY "


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@dataclass
class Child:
    """One child process and what it said."""

    name: str
    process: subprocess.Popen
    ready: dict | None = None
    output: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    ready_event: threading.Event = field(default_factory=threading.Event)

    def tail(self) -> str:
        return "\n".join(self.output)


class LocalSwarm:
    """Starts ``nectar dht`` and one ``nectar serve`` per span; ``initial_peers`` is the DHT's address."""

    def __init__(
        self,
        model: str,
        spans: Sequence[tuple[int, int] | None],
        server_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = 300.0,
        echo: bool = False,
        log_dir: Path | None = None,
        dht_args: Sequence[str] = (),
    ):
        """``log_dir``, if given, receives each child's whole output as ``<name>.log`` (``dht``, ``server0``...);
        ``dht_args`` go to ``nectar dht`` (a private swarm's ``--swarm-key``)."""
        self.model, self.spans, self.server_args = model, list(spans), list(server_args)
        self.dht_args = list(dht_args)
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.start_timeout, self.echo = start_timeout, echo
        self.dht: Child | None = None
        self.servers: list[Child] = []

    @property
    def initial_peers(self) -> list[str]:
        if self.dht is None or self.dht.ready is None:
            raise RuntimeError("the local swarm is not started")
        return self.dht.ready["maddrs"]

    def start(self) -> LocalSwarm:
        try:
            self.dht = self._spawn("dht", ["dht", *self.dht_args])
            self._wait_ready([self.dht])
            for span in self.spans:
                self.add_server(span, wait=False)
            self._wait_ready(self.servers)
        except BaseException:
            self.stop()
            raise
        return self

    def add_server(self, span: tuple[int, int] | None, extra_args: Sequence[str] = (), wait: bool = True) -> Child:
        args = ["serve", self.model, "--initial-peers", *self.initial_peers, *self.server_args, *extra_args]
        if span is not None:
            args += ["--blocks", f"{span[0]}:{span[1]}"]
        child = self._spawn(f"server{len(self.servers)}", args)
        self.servers.append(child)
        if wait:
            self._wait_ready([child])
        return child

    def _spawn(self, name: str, args: list[str], wrap: Sequence[str] = ()) -> Child:
        """Start ``nectar ARGS`` as child ``name``; ``wrap`` prefixes the command (tests: ``ip netns exec NS``)."""
        process = subprocess.Popen(
            [*wrap, *child_command(), *args, "--ready-json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process)
        threading.Thread(target=self._read, args=(child,), daemon=True, name=f"read-{name}").start()
        return child

    def _read(self, child: Child) -> None:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{child.name}.log", "w", buffering=1)  # noqa: SIM115 (closed below)
        try:
            self._read_lines(child, log)
        finally:
            if log is not None:
                log.close()
        child.ready_event.set()  # the process ended: wake whoever waits

    def _read_lines(self, child: Child, log) -> None:
        for line in child.process.stdout:
            if log is not None:
                log.write(line)
            line = line.rstrip("\n")
            if line.startswith(READY_PREFIX) and child.ready is None:
                child.ready = json.loads(line[len(READY_PREFIX) :])
                child.ready_event.set()
                continue
            child.output.append(line)
            if self.echo:
                print(f"[{child.name}] {line}", file=sys.stderr)

    def exited_servers(self) -> list[str]:
        """One line per server process that has ended: its name, its blocks, its exit code and its last line."""
        lines = []
        for child, span in zip(self.servers, [*self.spans, *[None] * len(self.servers)], strict=False):
            code = child.process.poll()
            if code is None:
                continue
            blocks = f" (blocks {span[0]}:{span[1]})" if span else ""
            last = next((line for line in reversed(child.output) if line.strip()), "")
            lines.append(f"{child.name}{blocks} exited with code {code}" + (f"; its last line: {last}" if last else ""))
        return lines

    def _wait_ready(self, children: Sequence[Child]) -> None:
        deadline = time.monotonic() + self.start_timeout
        for child in children:
            child.ready_event.wait(max(0.0, deadline - time.monotonic()))
            if child.ready is None:
                code = child.process.poll()
                state = f"exited with code {code}" if code is not None else "did not start in time"
                raise RuntimeError(f"{child.name} {state}:\n{child.tail()}")

    def kill(self, index: int, signum: int = signal.SIGKILL) -> None:
        self.servers[index].process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every child (servers first: they announce leaving), then SIGKILL what is left."""
        children = [*self.servers, *([self.dht] if self.dht else [])]
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGCONT)  # a stopped child cannot handle SIGTERM
                child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def __enter__(self) -> LocalSwarm:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def even_spans(num_blocks: int, num_servers: int) -> list[tuple[int, int]]:
    """Split blocks into contiguous, nearly equal spans."""
    if not 1 <= num_servers <= num_blocks:
        raise ValueError(f"need between 1 and {num_blocks} servers, got {num_servers}")
    bounds = [round(i * num_blocks / num_servers) for i in range(num_servers + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
