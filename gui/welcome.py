"""``Welcome``: the first run: measure this computer (with progress), say in plain words what it can lend,
and let the owner choose the swarm, when to lend, and whether Nectar starts at login.

Shown once per data directory (a marker in the config directory), or from the settings dialog.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QRadioButton,
    QVBoxLayout,
    QWizard,
    QWizardPage,
)

from agent.api.models import BenchmarkAnswer, Status
from agent.paths import AgentPaths
from gui import autostart
from gui.dashboard import benchmark_html
from gui.settings_form import parse_windows_or_error

if TYPE_CHECKING:
    from gui.app import NectarApp

MARKER = "welcomed"


def needs_welcome(paths: AgentPaths) -> bool:
    return not (paths.config_dir / MARKER).exists()


def mark_welcomed(paths: AgentPaths) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    (paths.config_dir / MARKER).write_text("the welcome was shown; delete this file to see it again\n")


class MeasurePage(QWizardPage):
    """Runs the benchmark through the agent (the cached one when fresh) with a running clock."""

    def __init__(self, wizard: Welcome):
        super().__init__()
        self.welcome = wizard
        self.setTitle("Welcome to Nectar")
        self.setSubTitle(
            "Nectar lends this computer to a swarm that runs a large language model together, block by block. "
            "First, a short measurement of what this computer can do."
        )
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy: the agent measures in one call
        self.clock = QLabel("measuring...")
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.lend = QLabel("")
        self.lend.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.progress)
        layout.addWidget(self.clock)
        layout.addWidget(self.result)
        layout.addWidget(self.lend)
        layout.addStretch(1)
        self.done = False
        self.started = time.monotonic()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)

    def initializePage(self) -> None:
        if self.done:
            return
        self.started = time.monotonic()
        self.timer.start(500)
        self.welcome.app.link.call(lambda client: client.run_benchmark(refresh=False), self._measured, self._failed)

    def isComplete(self) -> bool:
        return self.done

    def _tick(self) -> None:
        seconds = time.monotonic() - self.started
        self.clock.setText(f"loading one block of the model and timing it... {seconds:.0f} s")

    def _measured(self, answer: BenchmarkAnswer) -> None:
        self._finish()
        self.clock.setText("Measured.")
        self.result.setText(benchmark_html(answer))
        self.lend.setText(what_it_lends(answer, self.welcome.app.link.status))

    def _failed(self, message: str) -> None:
        self._finish()
        self.clock.setText("The measurement did not work; Nectar still lends, and measures again at its next start.")
        self.result.setText(message)

    def _finish(self) -> None:
        self.timer.stop()
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.done = True
        self.completeChanged.emit()


def what_it_lends(answer: BenchmarkAnswer, status: Status | None) -> str:
    """'This computer serves blocks 0-29 of smollm2-135m, about 40 tokens/s per block.' in plain words."""
    model = status.swarm.model if status is not None else (answer.compute.model if answer.compute else "the model")
    speed = ""
    if answer.compute is not None:
        speed = f", at about {answer.compute.tokens_per_second:.0f} tokens per second for each block when chatting"
    if status is not None and status.server.blocks:
        start, end = status.server.blocks
        return f"This computer can lend <b>blocks {start} to {end - 1}</b> of <b>{model}</b>{speed}."
    return f"This computer will serve as many blocks of <b>{model}</b> as its memory allows{speed}."


class ChoicesPage(QWizardPage):
    """The swarm, when to lend, and start at login; written to the agent's settings on Finish."""

    def __init__(self, wizard: Welcome):
        super().__init__()
        self.welcome = wizard
        self.setTitle("How to lend")
        self.setSubTitle("You can change all of this later in Settings.")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Swarm</b>"))
        self.local = QRadioButton("This computer only (a local swarm of the built-in model; works offline)")
        self.join = QRadioButton("Join a swarm:")
        self.swarm_name = QLineEdit()
        self.swarm_name.setPlaceholderText("its name")
        self.peers = QLineEdit()
        self.peers.setPlaceholderText("its addresses (/ip4/.../tcp/.../p2p/...), comma-separated")
        self.local.setChecked(True)
        for widget in (self.local, self.join, self.swarm_name, self.peers):
            layout.addWidget(widget)
        layout.addWidget(QLabel("<b>When to lend</b>"))
        self.when_idle = QRadioButton("Only when I am away from the computer")
        self.always = QRadioButton("Always, but much less while I use the computer")
        self.scheduled = QRadioButton("On a schedule:")
        self.hours = QLineEdit("22:00-07:00")
        self.when = QButtonGroup(self)
        for button in (self.when_idle, self.always, self.scheduled):
            self.when.addButton(button)
            layout.addWidget(button)
        self.when_idle.setChecked(True)
        layout.addWidget(self.hours)
        self.error = QLabel("")
        self.error.setStyleSheet("color: #C62828;")
        layout.addWidget(self.error)
        self.autostart = QCheckBox("Start Nectar when I log in")
        self.autostart.setChecked(True)
        layout.addWidget(self.autostart)
        layout.addStretch(1)
        for widget in (self.local, self.join, self.scheduled, self.when_idle, self.always):
            widget.toggled.connect(self._update)
        self._update()

    def _update(self) -> None:
        self.swarm_name.setEnabled(self.join.isChecked())
        self.peers.setEnabled(self.join.isChecked())
        self.hours.setEnabled(self.scheduled.isChecked())

    def changes(self) -> tuple[dict, str | None]:
        """The settings this page asks for, or a one-line reason they are not valid."""
        changes: dict = {}
        if self.join.isChecked():
            name = self.swarm_name.text().strip()
            peers = [part.strip() for part in self.peers.text().split(",") if part.strip()]
            if not name or name == "local" or not peers:
                return {}, "A swarm to join needs a name (not 'local') and at least one address."
            changes |= {"swarm.name": name, "swarm.initial_peers": peers}
        else:
            changes["swarm.name"] = "local"
        if self.when_idle.isChecked():
            changes |= {"activity.when_active": "paused", "schedule.every_day": "00:00-24:00"}
        elif self.always.isChecked():
            changes |= {"activity.when_active": "reduced", "schedule.every_day": "00:00-24:00"}
        else:
            problem = parse_windows_or_error(self.hours.text())
            if problem:
                return {}, f"Hours: {problem}"
            changes |= {"activity.when_active": "paused", "schedule.every_day": self.hours.text().strip()}
        return changes, None

    def validatePage(self) -> bool:
        changes, problem = self.changes()
        self.error.setText(problem or "")
        if problem:
            return False
        self.welcome.apply(changes, self.autostart.isChecked())
        return True


class Welcome(QWizard):
    def __init__(self, app: NectarApp):
        super().__init__()
        self.app = app
        self.setWindowTitle("Welcome to Nectar")
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.resize(640, 520)
        self.measure = MeasurePage(self)
        self.choices = ChoicesPage(self)
        self.addPage(self.measure)
        self.addPage(self.choices)

    def apply(self, changes: dict, start_at_login: bool) -> None:
        try:
            autostart.set_enabled(start_at_login)
        except OSError as error:
            self.app.report(f"cannot change start at login: {error}")
        mark_welcomed(self.app.paths)
        changes = {**changes, "desktop.start_at_login": start_at_login}  # the setting records the choice
        self.app.link.call(lambda client: client.set_settings(changes), None, self.app.report)
