"""Start at login: the one hook each desktop offers, behind ``enabled()`` / ``set_enabled(on)``.

Linux: an XDG autostart entry (``~/.config/autostart/nectar.desktop``). Windows: the current user's ``Run`` key.
macOS: a LaunchAgent plist. Each starts ``nectar`` (the tray, which starts the agent). Only the Linux one can
run here; the others are written to their documented formats and untested.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

import platformdirs

ENTRY_NAME = "nectar"
MAC_LABEL = "org.nectar.agent"


def command() -> list[str]:
    """The command that starts the tray (the same interpreter as this one)."""
    return [sys.executable, "-m", "agent"]


def _linux_entry() -> Path:
    return Path(platformdirs.user_config_dir()) / "autostart" / f"{ENTRY_NAME}.desktop"


def _mac_plist() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{MAC_LABEL}.plist"


def enabled() -> bool:
    if sys.platform == "win32":
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, r"Software\Microsoft\Windows\CurrentVersion\Run") as key:
                winreg.QueryValueEx(key, ENTRY_NAME)
            return True
        except OSError:
            return False
    if sys.platform == "darwin":
        return _mac_plist().exists()
    return _linux_entry().exists()


def set_enabled(on: bool) -> None:
    """Add or remove the login entry; an OSError says why it could not be written."""
    if sys.platform == "win32":
        _set_windows(on)
    elif sys.platform == "darwin":
        _set_file(_mac_plist(), _mac_text() if on else None)
    else:
        _set_file(_linux_entry(), _linux_text() if on else None)


def _linux_text() -> str:
    exec_line = " ".join(shlex.quote(part) for part in command())
    home = os.environ.get("NECTAR_HOME")
    if home:  # an agent with its own home starts with it at login too
        exec_line = f"env NECTAR_HOME={shlex.quote(home)} {exec_line}"
    return (
        "[Desktop Entry]\nType=Application\nName=Nectar\nComment=Lend this computer to the Nectar swarm\n"
        f"Exec={exec_line}\nTerminal=false\nX-GNOME-Autostart-enabled=true\n"
    )


def _mac_text() -> str:
    arguments = "".join(f"<string>{part}</string>" for part in command())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
        f"<key>Label</key><string>{MAC_LABEL}</string>"
        f"<key>ProgramArguments</key><array>{arguments}</array>"
        "<key>RunAtLoad</key><true/></dict></plist>\n"
    )


def _set_windows(on: bool) -> None:
    import subprocess
    import winreg

    path = r"Software\Microsoft\Windows\CurrentVersion\Run"
    with winreg.OpenKey(winreg.HKEY_CURRENT_USER, path, 0, winreg.KEY_SET_VALUE) as key:
        if on:
            winreg.SetValueEx(key, ENTRY_NAME, 0, winreg.REG_SZ, subprocess.list2cmdline(command()))
        else:
            with contextlib.suppress(FileNotFoundError):
                winreg.DeleteValue(key, ENTRY_NAME)


def _set_file(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
