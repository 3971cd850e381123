"""How this program starts itself again: child processes, the login entry, and files shipped beside the code.

In a source checkout or a pip install a child is ``python -m agent ...`` with the running interpreter. Inside a
frozen bundle (PyInstaller sets ``sys.frozen``) there is no Python to call: ``sys.executable`` is the bundle's own
``nectar`` program, which takes the subcommand directly. Every place that starts a child asks ``child_command()``,
so the supervisor, the local swarm and the benchmark behave the same in both.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def is_frozen() -> bool:
    """True inside a PyInstaller bundle."""
    return bool(getattr(sys, "frozen", False))


def child_command() -> list[str]:
    """The command prefix that runs ``nectar``'s subcommands in a new process: append ``serve ...``, ``dht`` etc."""
    if is_frozen():
        return [sys.executable]
    return [sys.executable, "-m", "agent"]


def launch_command() -> list[str]:
    """The command a login entry or a service runs to start the agent (with its GUI when installed).

    Frozen: the bundle's executable. Installed with pip: the ``nectar`` script beside the interpreter when present
    (it survives an interpreter upgrade of the environment less often than ``python -m``), else ``python -m agent``.
    """
    if is_frozen():
        return [sys.executable, "run"]
    script = Path(sys.executable).with_name("nectar")
    if script.is_file():
        return [str(script), "run"]
    found = shutil.which("nectar")
    return [found, "run"] if found else [*child_command(), "run"]


def bundle_root() -> Path:
    """Where the code's data files lie: the bundle's data folder when frozen, else the source checkout."""
    if is_frozen():
        return Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent))
    return SOURCE_ROOT


def assets_dir() -> Path:
    """``assets/`` (icons): shipped at the top of the bundle, or at the top of the checkout."""
    return bundle_root() / "assets"
