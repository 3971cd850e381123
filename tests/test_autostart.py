"""Start at login: the XDG autostart entry written and removed in a temporary config home, from the setting as well
as directly; the macOS LaunchAgent's plist; the Windows backend imports here (its registry calls need Windows)."""

from __future__ import annotations

import plistlib
import shlex
import sys
from pathlib import Path

import pytest
from agent_helpers import start_agent
from conftest import run_nectar

from agent import autostart
from agent.api.models import SettingsChange
from agent.executable import child_command, launch_command


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("NECTAR_HOME", raising=False)
    return home


def entry_file(config_home: Path) -> Path:
    return config_home / "autostart" / "nectar.desktop"


def desktop_values(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert lines[0] == "[Desktop Entry]"
    return dict(line.split("=", 1) for line in lines[1:] if line)


def test_enable_writes_an_xdg_entry_that_runs_this_installation(config_home: Path) -> None:
    assert not autostart.is_enabled()
    where = autostart.enable()
    assert where == str(entry_file(config_home))
    values = desktop_values(entry_file(config_home))
    assert values["Type"] == "Application" and values["Terminal"] == "false"
    assert shlex.split(values["Exec"]) == launch_command()
    assert launch_command()[-1] == "run"
    assert autostart.is_enabled()
    autostart.disable()
    assert not entry_file(config_home).exists() and not autostart.is_enabled()
    autostart.disable()  # already gone: nothing to do, no error


def test_an_agent_home_is_kept_at_login(config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NECTAR_HOME", str(tmp_path / "my home"))
    autostart.enable(["/opt/nectar/nectar", "run"])
    exec_line = desktop_values(entry_file(config_home))["Exec"]
    assert shlex.split(exec_line) == ["env", f"NECTAR_HOME={tmp_path / 'my home'}", "/opt/nectar/nectar", "run"]


def test_an_entry_switched_off_by_the_desktop_counts_as_disabled(config_home: Path) -> None:
    autostart.enable()
    path = entry_file(config_home)
    path.write_text(path.read_text() + "Hidden=true\n")
    assert not autostart.is_enabled()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["/opt/nectar/nectar", "run"], "/opt/nectar/nectar run"),
        (["/home/a b/nectar", "run"], '"/home/a b/nectar" run'),
        (['say "hi"', "50%"], '"say \\\\"hi\\\\"" 50%%'),
        (["$HOME"], '"\\\\$HOME"'),
        ([""], '""'),
    ],
)
def test_exec_quoting_follows_the_desktop_entry_specification(args: list[str], line: str) -> None:
    assert autostart.desktop_exec(args) == line


def test_the_setting_applied_by_a_running_agent(config_home: Path, tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "agent", lend=False)
    try:
        agent.state.set_settings(SettingsChange(changes={"desktop.start_at_login": True}))
        assert entry_file(config_home).is_file()
        agent.state.set_settings(SettingsChange(changes={"compute.threads_active": 2}))  # unrelated: left alone
        assert entry_file(config_home).is_file()
        agent.state.set_settings(SettingsChange(changes={"desktop.start_at_login": False}))
        assert not entry_file(config_home).exists()
    finally:
        agent.close()


def test_the_setting_applied_without_an_agent(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NECTAR_HOME", str(tmp_path / "home"))  # run_nectar passes the environment on
    on = run_nectar("config", "set", "desktop.start_at_login", "true")
    assert on.returncode == 0, on.stderr
    assert f"start at login: {entry_file(config_home)}" in on.stdout and entry_file(config_home).is_file()
    off = run_nectar("config", "set", "desktop.start_at_login", "false")
    assert off.returncode == 0 and not entry_file(config_home).exists()


def test_launch_agent_plist(tmp_path: Path) -> None:
    entry = autostart.LaunchAgent(home=tmp_path)
    entry.enable(["/Applications/Nectar.app/Contents/MacOS/nectar-app"], {"NECTAR_HOME": "/tmp/x"})
    job = plistlib.loads(entry.path.read_bytes())
    assert entry.path == tmp_path / "Library" / "LaunchAgents" / "org.nectar.agent.plist"
    assert job["Label"] == "org.nectar.agent" and job["RunAtLoad"] is True and job["KeepAlive"] is False
    assert job["ProgramArguments"] == ["/Applications/Nectar.app/Contents/MacOS/nectar-app"]
    assert job["EnvironmentVariables"] == {"NECTAR_HOME": "/tmp/x"}
    assert entry.is_enabled()
    entry.disable()
    assert not entry.is_enabled()


def test_each_platform_has_a_backend_and_windows_imports_here() -> None:
    assert isinstance(autostart.backend("linux"), autostart.XdgAutostart)
    assert isinstance(autostart.backend("darwin"), autostart.LaunchAgent)
    windows = autostart.backend("win32")  # winreg is imported only when the registry is touched
    assert isinstance(windows, autostart.WindowsRunKey)
    assert windows.where().endswith(r"CurrentVersion\Run\Nectar")


def test_child_command_runs_the_bundle_itself_when_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    assert child_command() == [sys.executable, "-m", "agent"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/nectar/nectar")
    assert child_command() == ["/opt/nectar/nectar"]
    assert launch_command() == ["/opt/nectar/nectar", "run"]
