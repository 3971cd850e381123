"""Start the agent as its own process when none runs for this data directory, so the GUI stays only a client.

The agent is started detached (``nectar run --no-gui`` in a new session), so closing the GUI, or the GUI
crashing, leaves it lending; only the tray's Quit stops it. What it prints while starting goes to a file in
the log directory, whose last lines explain a failed start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from agent.api.server import ApiAddress
from agent.executable import child_command
from agent.paths import AgentPaths

START_LOG = "agent-start.log"


def running_agent(paths: AgentPaths) -> ApiAddress | None:
    """The address of the agent that runs for ``paths``, or None."""
    address = ApiAddress.read(paths.api_file)
    return address if address is not None and psutil.pid_exists(address.pid) else None


class AgentProcess:
    """The agent this GUI started (``None`` process when one was already running)."""

    def __init__(self, paths: AgentPaths, flags: list[str] | None = None):
        self.paths, self.flags = paths, list(flags or [])
        self.process: subprocess.Popen | None = None

    @property
    def log_file(self) -> Path:
        return self.paths.log_dir / START_LOG

    def ensure_running(self) -> bool:
        """Start the agent unless one runs; True when this call started it."""
        if running_agent(self.paths) is not None:
            return False
        self.paths.create()
        command = [*child_command(), "run", "--no-gui", *self.flags]  # the bundle's own executable when frozen
        options: dict = {}
        if sys.platform == "win32":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
        else:
            options["start_new_session"] = True  # Ctrl-C in the GUI's terminal or its exit does not stop the agent
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
                **options,
            )
        return True

    def failure(self) -> str | None:
        """Why the agent this GUI started has exited, or None while it runs (or was not started here)."""
        if self.process is None or self.process.poll() is None:
            return None
        try:
            lines = [line for line in self.log_file.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        errors = [line for line in lines if "error" in line.lower()]
        last = (errors or lines or [f"exit status {self.process.returncode}"])[-1]
        return f"the agent did not start: {last.removeprefix('nectar: error: ')} (see {self.log_file})"


def flags_from_args(args: object) -> list[str]:
    """The ``--group-name VALUE`` settings flags given to ``nectar run``, to pass on to the agent it starts."""
    flags = []
    for name, text in sorted(vars(args).items()) if args is not None else ():
        if name.startswith("setting:") and text is not None:
            flags += ["--" + name.removeprefix("setting:").replace(".", "-").replace("_", "-"), str(text)]
    return flags
