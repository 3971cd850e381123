"""``NectarApp``: the GUI's composition root: the link to the agent, the tray (or a window where there is
none), and the windows, each opened on demand. Actions that change the agent (pause, snooze, quit) live here
so the tray and the windows share them; each is one call through ``AgentLink``.
"""

from __future__ import annotations

import signal
import sys
import time

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from agent.api.models import Status
from agent.paths import AgentPaths
from gui.agent_process import AgentProcess
from gui.icons import icon
from gui.link import POLL_MS, AgentLink
from gui.state_view import View, view_of

START_TIMEOUT_S = 180.0  # a first start converts the model and benchmarks: "starting" for this long, then an error
TRAY_WAIT_S = 2.0  # a tray host may appear just after login (aw-qt waits for it too)


class NectarApp(QObject):
    view_changed = Signal(object)  # View

    def __init__(
        self, paths: AgentPaths, process: AgentProcess | None = None, use_tray: bool = True, poll_ms: int = POLL_MS
    ):
        super().__init__()
        self.paths, self.process = paths, process
        self.link = AgentLink(paths, poll_ms, self)
        self.view: View = view_of(None, starting=True)
        self.started_at = time.monotonic()
        self.seen_agent = False
        self.windows: dict[str, QWidget] = {}
        self.link.status_changed.connect(self._on_status)
        self.link.unreachable.connect(self._on_unreachable)
        self.tray = None
        if use_tray:
            from gui.tray import Tray

            self.tray = Tray(self)

    def start(self, welcome: bool | None = None) -> None:
        from gui.welcome import needs_welcome

        self.link.start()
        if self.tray is not None:
            self.tray.show()
        else:
            self.show_dashboard()  # no tray on this desktop: the dashboard is the app's window
        if welcome if welcome is not None else needs_welcome(self.paths):
            self.show_welcome()

    def close(self) -> None:
        for window in self.windows.values():
            window.close()
        if self.tray is not None:
            self.tray.hide()
        self.link.close()

    # windows
    def show_dashboard(self) -> QWidget:
        from gui.dashboard import Dashboard

        return self._show("dashboard", lambda: Dashboard(self))

    def show_chat(self) -> QWidget:
        from gui.chat.window import ChatWindow

        return self._show("chat", lambda: ChatWindow(self))

    def show_settings(self) -> QWidget:
        from gui.settings_dialog import SettingsDialog

        return self._show("settings", lambda: SettingsDialog(self))

    def show_welcome(self) -> QWidget:
        from gui.welcome import Welcome

        return self._show("welcome", lambda: Welcome(self))

    def _show(self, name: str, make) -> QWidget:
        window = self.windows.get(name)
        if window is None:
            window = self.windows[name] = make()
            window.setWindowIcon(icon("nectar"))
        window.show()
        window.raise_()
        window.activateWindow()
        return window

    # actions
    def pause(self) -> None:
        self.link.call(lambda client: client.pause(), self.link.apply_status, self.report)

    def resume(self) -> None:
        self.link.call(lambda client: client.resume(), self.link.apply_status, self.report)

    def snooze(self, minutes: float) -> None:
        self.link.call(lambda client: client.snooze(minutes), self.link.apply_status, self.report)

    def quit(self) -> None:
        """Stop the agent (it drains its server first) and close the GUI; quits even if the agent is gone."""
        self.link.call(lambda client: client.stop(), lambda _ack: self._exit(), lambda _error: self._exit())

    def report(self, message: str) -> None:
        """A failed action: say it where the user looks (a tray balloon, else the dashboard's status line)."""
        if self.tray is not None and self.tray.icon.isVisible():
            self.tray.icon.showMessage("Nectar", message, QSystemTrayIcon.MessageIcon.Warning, 8000)
        dashboard = self.windows.get("dashboard")
        if dashboard is not None:
            dashboard.show_message(message)

    def _exit(self) -> None:
        self.close()
        QApplication.quit()

    # state
    @Slot(object)
    def _on_status(self, status: Status) -> None:
        self.seen_agent = True
        self._set_view(view_of(status))

    @Slot(str)
    def _on_unreachable(self, message: str) -> None:
        failure = self.process.failure() if self.process is not None else None
        if failure:
            self._set_view(view_of(None, failure))
        elif not self.seen_agent and time.monotonic() - self.started_at < START_TIMEOUT_S:
            self._set_view(view_of(None, starting=True))
        else:
            self._set_view(view_of(None, message))

    def _set_view(self, view: View) -> None:
        if view != self.view:
            self.view = view
            self.view_changed.emit(view)


def tray_available(wait_s: float = TRAY_WAIT_S) -> bool:
    deadline = time.monotonic() + wait_s
    while not QSystemTrayIcon.isSystemTrayAvailable():
        if time.monotonic() > deadline:
            return False
        QApplication.processEvents()
        time.sleep(0.1)
    return True


def run_app(flags: list[str], paths: AgentPaths | None = None) -> int:
    """Start the agent if needed, then the tray (or the dashboard as a window) until Quit."""
    paths = paths or AgentPaths.default()
    qt = QApplication.instance() or QApplication(sys.argv[:1])
    qt.setApplicationName("Nectar")
    qt.setWindowIcon(icon("nectar"))
    process = AgentProcess(paths, flags)
    process.ensure_running()
    use_tray = tray_available()
    qt.setQuitOnLastWindowClosed(not use_tray)  # with a tray, closing windows leaves it (and the agent) running
    app = NectarApp(paths, process, use_tray=use_tray)
    signal.signal(signal.SIGINT, lambda *_: qt.quit())  # Ctrl-C closes the GUI; the agent keeps lending
    ticker = QTimer()
    ticker.timeout.connect(lambda: None)  # lets Python run its signal handlers while Qt's loop waits
    ticker.start(300)
    app.start()
    code = qt.exec()
    app.close()
    return code
