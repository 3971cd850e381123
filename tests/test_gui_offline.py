"""The GUI without a swarm: it never imports torch or the engine, headless mode never imports Qt, no display
gets a one-line way out, and a dead or stuck agent shows as a state while the window stays responsive."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gui_helpers  # noqa: F401  (offscreen Qt before the QApplication exists)
import pytest
from agent_helpers import temp_paths

from agent.api.server import ApiAddress
from gui.app import NectarApp
from gui.state_view import view_of

GUI_MODULES = [
    "gui.app",
    "gui.launch",
    "gui.tray",
    "gui.dashboard",
    "gui.settings_dialog",
    "gui.welcome",
    "gui.chat.window",
    "gui.tools.render_icons",
]


def python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_importing_the_gui_imports_neither_torch_nor_the_engine() -> None:
    imports = "; ".join(f"import {module}" for module in GUI_MODULES)
    result = python(
        f"import sys; {imports}; "
        "bad = sorted(m for m in sys.modules if m in ('torch', 'hivemind') or m.startswith(('torch.', 'engine'))); "
        "print(bad)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_headless_entry_points_never_import_qt() -> None:
    result = python(
        "import sys, agent.cli, agent.cli_agent, agent.runner; "
        "print(sorted(m for m in sys.modules if m.startswith(('PySide6', 'gui'))))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def fake_install(root: Path) -> Path:
    """The package metadata an install writes for the ``nectar.gui`` entry point (the shared test environment was
    installed before the GUI existed): a dist-info directory on the path, as pip would make."""
    info = root / "nectar_gui_entry-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nectar-gui-entry\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[nectar.gui]\nrun = gui.launch:run\n")
    return root


@pytest.mark.parametrize("argv", [[], ["run"]])
def test_without_a_display_nectar_says_so_and_how_to_run_headless(tmp_path: Path, argv: list[str]) -> None:
    site = fake_install(tmp_path / "site")
    env = {
        key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env["NECTAR_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        [sys.executable, "-m", "agent", *argv], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2
    assert "no graphical display" in result.stderr and "nectar run --no-gui" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "data" / "api.json").exists()  # nothing was started


def test_view_of_each_state() -> None:
    assert view_of(None, starting=True).state == "starting"
    assert view_of(None, "the agent does not answer").state == "error"


def test_a_dead_agent_shows_an_error_state(qtbot, tmp_path: Path) -> None:
    paths = temp_paths(tmp_path)
    app = NectarApp(paths, use_tray=False, poll_ms=200)
    app.start(welcome=False)
    try:
        qtbot.waitUntil(lambda: app.view.state == "error", timeout=10000)
        assert "no agent is running" in app.view.reason
        assert app.windows["dashboard"].isVisible()  # no tray here: the dashboard is the window
    finally:
        app.close()


def test_a_stuck_agent_shows_a_state_and_the_window_stays_responsive(qtbot, tmp_path: Path) -> None:
    paths = temp_paths(tmp_path)
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(8)  # accepts connections (the backlog) and never answers: an agent that hangs
    paths.token_file.write_text("token")
    address = ApiAddress(f"http://127.0.0.1:{stuck.getsockname()[1]}", os.getpid(), str(paths.token_file), time.time())
    paths.api_file.write_text(json.dumps(address.__dict__))
    app = NectarApp(paths, use_tray=False, poll_ms=200)
    ticks: list[float] = []
    timer = qtbot_timer(ticks)
    started = time.monotonic()
    app.start(welcome=False)
    try:
        qtbot.waitUntil(lambda: app.view.state == "error", timeout=20000)
        assert "did not answer in time" in app.view.reason
        waited = time.monotonic() - started
        # the Qt thread kept running its timers all along: no gap near the length of the wait
        gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)]
        assert len(ticks) > waited / 0.05 / 4 and max(gaps) < waited / 2
    finally:
        timer.stop()
        app.close()
        stuck.close()


def qtbot_timer(ticks: list[float]):
    from PySide6.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    return timer
