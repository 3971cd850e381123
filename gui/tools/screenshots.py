"""Screenshots of the real app under Xvfb with a tray host: the tray menu, dashboard, settings (with a value
refused next to its field), welcome, and the chat window after a real streamed answer.

Starts a fresh agent (its own ``NECTAR_HOME``) on a local swarm of the embedded model, drives the app as a user
would (the tray icon is right-clicked with xdotool), and saves PNGs to a folder it prints:

    python -m gui.tools.screenshots [--out /tmp/nectar-screens]

Needs Xvfb, trayer (the tray host), xdotool and ImageMagick's ``import`` (``apt-get install xvfb trayer xdotool
imagemagick``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SCREEN = "1280x800x24"
CHAT_PROMPT = "What does this function do? Answer in one sentence.\n\n```python\ndef add(a, b):\n    return a + b\n```"


def free_display() -> int:
    for number in range(70, 200):
        if not Path(f"/tmp/.X{number}-lock").exists() and not Path(f"/tmp/.X11-unix/X{number}").exists():
            return number
    raise RuntimeError("no free X display number")


def start_x(number: int) -> list[subprocess.Popen]:
    """Xvfb and a tray host (trayer) on display ``:number``."""
    missing = [tool for tool in ("Xvfb", "trayer", "xdotool", "import") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (apt-get install xvfb trayer xdotool imagemagick)")
    xvfb = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", SCREEN, "-nolisten", "tcp"])
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if time.monotonic() > deadline or xvfb.poll() is not None:
            raise SystemExit("Xvfb did not start")
        time.sleep(0.1)
    env = {**os.environ, "DISPLAY": f":{number}"}
    probe = subprocess.run(
        [sys.executable, "-c", "from PySide6.QtWidgets import QApplication; QApplication([])"],
        env={**env, "QT_QPA_PLATFORM": "xcb"},
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        xvfb.terminate()
        raise SystemExit(
            "Qt cannot open the X display (its xcb plugin needs libraries: apt-get install libxcb-icccm4 "
            f"libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0):\n{probe.stderr.strip()}"
        )
    tray = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "28", "--tint",
         "0x3c3f45", "--transparent", "true", "--alpha", "0", "--SetDockType", "true"],
        env=env,
    )  # fmt: skip
    return [tray, xvfb]


def pump(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt loop until ``condition`` holds."""
    from PySide6.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.05)


def settle(seconds: float = 0.8) -> None:
    end = time.monotonic() + seconds
    pump(lambda: time.monotonic() > end, seconds + 1, "a pause")


def grab_screen(out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    subprocess.run(["import", "-window", "root", str(path)], check=True, env=os.environ.copy())
    return path


def grab(widget, out: Path, name: str) -> Path:
    settle()
    path = out / f"{name}.png"
    widget.grab().save(str(path))
    return path


def drive(out: Path) -> list[Path]:
    """Start the app like ``nectar`` does and take each screenshot."""
    from PySide6.QtWidgets import QApplication

    from agent.paths import AgentPaths
    from agent.settings_file import SettingsFile
    from gui.agent_process import AgentProcess
    from gui.app import NectarApp, tray_available
    from gui.chat.message_view import MessageView
    from gui.icons import icon

    paths = AgentPaths.default().create()
    # this machine has no idle-time source: lend at full speed, as after a few minutes away
    SettingsFile(paths.config_file).update(
        {"api.port": 0, "activity.idle_source": "none", "activity.when_unknown": "full",
         "activity.other_cpu_percent_max": 100.0, "activity.pause_on_battery": False}
    )  # fmt: skip
    qt = QApplication(sys.argv[:1])
    qt.setApplicationName("Nectar")
    qt.setWindowIcon(icon("nectar"))
    process = AgentProcess(paths)
    process.ensure_running()
    has_tray = tray_available(10.0)
    print(f"tray available: {has_tray}", file=sys.stderr)
    app = NectarApp(paths, process, use_tray=has_tray, poll_ms=1000)
    app.start(welcome=False)
    shots: list[Path] = []
    try:
        pump(lambda: app.view.state == "lending", 300, "the agent to lend")
        # the tray menu, opened by a real right click on the tray icon
        settle(2)
        if app.tray is not None:
            geometry = app.tray.icon.geometry()
            x, y = geometry.center().x(), geometry.center().y()
            subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", "3"], check=True)
            pump(lambda: app.tray.menu.isVisible(), 10, "the tray menu")
            settle(1)
            shots.append(grab_screen(out, "1-tray-menu"))
            app.tray.menu.hide()
        dashboard = app.show_dashboard()
        dashboard.move(0, 30)
        pump(lambda: dashboard.coverage.map.num_blocks > 0 and not dashboard.coverage.map.uncovered, 180, "coverage")
        pump(lambda: "measured" in dashboard.benchmark_label.text(), 600, "the benchmark")
        settle(6)  # a log refresh and a contribution reading
        shots.append(grab(dashboard, out, "2-dashboard"))
        settings = app.show_settings()
        pump(lambda: bool(settings.form.loaded), 30, "the settings")
        settings.form.rows["activity.idle_minutes"].editor.setValue(5)
        row = settings.form.rows["schedule.every_day"]
        row.editor.setText("9-17")
        settings.save()  # refused next to the field, nothing sent
        shots.append(grab(settings, out, "3-settings-refused-value"))
        settings.form.setCurrentIndex(1)
        shots.append(grab(settings, out, "4-settings-computing"))
        settings.close()
        welcome = app.show_welcome()
        pump(lambda: welcome.measure.done, 600, "the welcome's measurement")
        shots.append(grab(welcome, out, "5-welcome-measured"))
        welcome.next()
        shots.append(grab(welcome, out, "6-welcome-choices"))
        welcome.close()
        chat = app.show_chat()
        finished: list[object] = []
        chat.answer_finished.connect(finished.append)
        chat.parameters.max_tokens.setValue(120)
        chat.parameters.temperature.setValue(0.2)
        chat.parameters.system_prompt.setPlainText("You are a helpful assistant.")
        chat.composer.setPlainText(CHAT_PROMPT)
        chat.send()
        pump(lambda: bool(finished), 600, "the chat answer")
        shots.append(grab(chat, out, "7-chat-answer"))
        chat.composer.setPlainText("Write it for three numbers.")
        chat.send()
        pump(lambda: len(finished) > 1, 600, "the second answer")
        finished.clear()
        views = [view for view in chat.findChildren(MessageView) if view.role == "assistant"]
        views[-1].regenerate_button.click()
        pump(lambda: bool(finished), 600, "the regenerated answer")
        shots.append(grab(chat, out, "8-chat-regenerated-branch"))
    finally:
        app.quit()  # stops the agent too (it drains its server)
        pump(lambda: process.process is None or process.process.poll() is not None, 120, "the agent to stop")
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/nectar-screens", help="folder for the PNGs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    number = free_display()
    children = start_x(number)
    home = tempfile.mkdtemp(prefix="nectar-screens-")
    os.environ.update(
        DISPLAY=f":{number}", NECTAR_HOME=home, XDG_CONFIG_HOME=str(Path(home) / "xdg"), QT_QPA_PLATFORM="xcb"
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        shots = drive(out)
    finally:
        for child in children:
            child.terminate()
            child.wait(10)
    print(f"{len(shots)} screenshots in {out}:")
    for shot in shots:
        print(f"  {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
