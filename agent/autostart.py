"""Start at login, behind one interface: ``enable()``, ``disable()``, ``is_enabled()``.

Each desktop has one place for it, and each backend writes only there:
- Linux (and other XDG desktops): ``$XDG_CONFIG_HOME/autostart/nectar.desktop`` (XDG Autostart specification).
- Windows: the value ``Nectar`` under ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``.
- macOS: the LaunchAgent ``~/Library/LaunchAgents/org.nectar.agent.plist`` (``RunAtLoad``).
The entry runs ``launch_command()`` (the bundle's ``nectar run`` once installed). The ``desktop.start_at_login``
setting drives it: a running agent applies a change at once (``on_settings_changed``), and so does
``nectar config set`` without one. ``winreg`` is imported only on Windows, so this module imports everywhere.
"""

from __future__ import annotations

import logging
import os
import plistlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import platformdirs

from agent.executable import launch_command
from agent.paths import HOME_VARIABLE

logger = logging.getLogger(__name__)

ENTRY_NAME = "nectar"
WINDOWS_VALUE = "Nectar"
WINDOWS_RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
MAC_LABEL = "org.nectar.agent"
SETTING = "desktop.start_at_login"
_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


class LoginEntry(Protocol):
    """One operating system's start-at-login hook."""

    def enable(self, command: list[str], env: dict[str, str]) -> None: ...
    def disable(self) -> None: ...
    def is_enabled(self) -> bool: ...
    def where(self) -> str: ...


class XdgAutostart:
    """A desktop entry in the user's autostart directory; the system's entries are left alone."""

    def __init__(self, config_home: Path | None = None):
        self.path = (config_home or Path(platformdirs.user_config_dir())) / "autostart" / f"{ENTRY_NAME}.desktop"

    def enable(self, command: list[str], env: dict[str, str]) -> None:
        exec_args = (["env", *(f"{name}={value}" for name, value in env.items())] if env else []) + command
        text = (
            "[Desktop Entry]\n"
            "Type=Application\n"
            "Name=Nectar\n"
            "Comment=Lend this computer's idle time to the Nectar swarm\n"
            f"Exec={desktop_exec(exec_args)}\n"
            "Icon=nectar\n"
            "Terminal=false\n"
            "X-GNOME-Autostart-enabled=true\n"
        )
        _write_atomic(self.path, text.encode())

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_enabled(self) -> bool:
        """Present and not switched off (``Hidden=true`` or ``X-GNOME-Autostart-enabled=false`` by a desktop tool)."""
        try:
            lines = {line.strip().replace(" ", "") for line in self.path.read_text(encoding="utf-8").splitlines()}
        except OSError:
            return False
        return not lines & {"Hidden=true", "X-GNOME-Autostart-enabled=false"}

    def where(self) -> str:
        return str(self.path)


class WindowsRunKey:
    """A value under the current user's ``Run`` key (no administrator rights needed)."""

    def enable(self, command: list[str], env: dict[str, str]) -> None:
        import winreg  # Windows only

        with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, WINDOWS_RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
            winreg.SetValueEx(key, WINDOWS_VALUE, 0, winreg.REG_SZ, subprocess.list2cmdline(command))

    def disable(self) -> None:
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, WINDOWS_RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, WINDOWS_VALUE)
        except FileNotFoundError:
            pass

    def is_enabled(self) -> bool:
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, WINDOWS_RUN_KEY) as key:
                winreg.QueryValueEx(key, WINDOWS_VALUE)
        except FileNotFoundError:
            return False
        return True

    def where(self) -> str:
        return f"HKEY_CURRENT_USER\\{WINDOWS_RUN_KEY}\\{WINDOWS_VALUE}"


class LaunchAgent:
    """A per-user LaunchAgent that launchd starts at login."""

    def __init__(self, home: Path | None = None):
        self.path = (home or Path.home()) / "Library" / "LaunchAgents" / f"{MAC_LABEL}.plist"

    def enable(self, command: list[str], env: dict[str, str]) -> None:
        _write_atomic(self.path, launch_agent_plist(command, env))

    def disable(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_enabled(self) -> bool:
        return self.path.is_file()

    def where(self) -> str:
        return str(self.path)


def launch_agent_plist(command: list[str], env: dict[str, str]) -> bytes:
    """The LaunchAgent's XML: start once at login, never restart (the agent supervises its own children)."""
    job: dict[str, Any] = {
        "Label": MAC_LABEL,
        "ProgramArguments": command,
        "RunAtLoad": True,
        "KeepAlive": False,
        "ProcessType": "Interactive",
    }
    if env:
        job["EnvironmentVariables"] = env
    return plistlib.dumps(job)


def backend(platform: str | None = None) -> LoginEntry:
    platform = platform or sys.platform
    if platform == "win32":
        return WindowsRunKey()
    if platform == "darwin":
        return LaunchAgent()
    return XdgAutostart()


def enable(command: list[str] | None = None) -> str:
    """Start ``command`` (default: this installation's ``nectar run``) at login; returns where the entry is."""
    entry = backend()
    home = os.environ.get(HOME_VARIABLE)  # an agent with its own home starts with it at login too
    entry.enable(command or launch_command(), {HOME_VARIABLE: home} if home else {})
    return entry.where()


def disable() -> str:
    entry = backend()
    entry.disable()
    return entry.where()


def is_enabled() -> bool:
    return backend().is_enabled()


def apply(start_at_login: bool) -> str:
    """Make the login entry match the setting; an ``OSError`` says why it could not be written."""
    return enable() if start_at_login else disable()


def on_settings_changed(old: Any, new: Any) -> None:
    """A settings listener for the running agent: applies ``desktop.start_at_login`` when it changed."""
    if old.desktop.start_at_login == new.desktop.start_at_login:
        return
    where = apply(new.desktop.start_at_login)
    logger.info("start at login %s (%s)", "enabled" if new.desktop.start_at_login else "disabled", where)


def desktop_exec(args: list[str]) -> str:
    """An ``Exec=`` value: arguments quoted as the Desktop Entry specification asks, ``%`` doubled."""
    quoted = []
    for arg in args:
        if arg and not _EXEC_RESERVED & set(arg):
            quoted.append(arg.replace("%", "%%"))
            continue
        escaped = "".join("\\" + char if char in '"`$\\' else char for char in arg)
        quoted.append('"' + escaped.replace("%", "%%") + '"')
    return " ".join(quoted).replace("\\", "\\\\")  # then escaped once more as any string value


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
