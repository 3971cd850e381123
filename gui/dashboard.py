"""``Dashboard``: the swarm's coverage, this machine's benchmark, mode and reason, contribution over time, and
the log tail, refreshed live while the window is open (every read is an ``AgentLink`` call, off the Qt thread).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtGui import QCloseEvent, QFont, QFontDatabase, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from agent.api.models import BenchmarkAnswer, Contribution, LogsAnswer, Status, SwarmMap
from gui.contribution_plot import ContributionPlot
from gui.coverage_plot import CoveragePlot
from gui.icons import icon
from gui.link import elapsed
from gui.state_view import View, span_text
from gui.tray import SNOOZE_CHOICES

if TYPE_CHECKING:
    from gui.app import NectarApp

SLOW_REFRESH_MS = 5000  # swarm map, contribution and logs; the status follows the link's own poll
LOG_LINES = 200


class Dashboard(QMainWindow):
    def __init__(self, app: NectarApp):
        super().__init__()
        self.app = app
        self.setWindowTitle("Nectar")
        self.resize(980, 760)
        self.coverage = CoveragePlot()
        self.contribution_plot = ContributionPlot()
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(SLOW_REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        app.view_changed.connect(self.show_view)
        app.link.status_changed.connect(self.show_status)
        self.show_view(app.view)
        if app.link.status is not None:
            self.show_status(app.link.status)

    # layout
    def _build(self) -> None:
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addLayout(self._header())
        swarm_box = QGroupBox("Swarm coverage")
        swarm_layout = QVBoxLayout(swarm_box)
        self.swarm_summary = QLabel("reading the swarm...")
        self.swarm_summary.setWordWrap(True)
        swarm_layout.addWidget(self.swarm_summary)
        swarm_layout.addWidget(self.coverage, 1)
        legend = QLabel(
            '<span style="color:#C98210">&#9632;</span> this computer &nbsp; '
            '<span style="color:#4C78A8">&#9632;</span> other servers &nbsp; '
            '<span style="color:#D23F3F">&#9632;</span> blocks nobody serves'
        )
        swarm_layout.addWidget(legend)
        middle = QHBoxLayout()
        middle.addWidget(self._benchmark_box(), 1)
        middle.addWidget(self._contribution_box(), 1)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(swarm_box, 3)
        top_layout.addLayout(middle, 2)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self._log_box())
        splitter.setStretchFactor(0, 4)
        splitter.setStretchFactor(1, 1)
        layout.addWidget(splitter, 1)
        self.message = QLabel("")
        self.statusBar().addWidget(self.message, 1)
        self.setCentralWidget(central)

    def _header(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.state_icon = QLabel()
        self.state_title = QLabel()
        font = QFont(self.state_title.font())
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        self.state_title.setFont(font)
        self.state_reason = QLabel()
        self.state_reason.setWordWrap(True)
        self.state_detail = QLabel()
        self.state_detail.setWordWrap(True)
        text = QVBoxLayout()
        text.addWidget(self.state_title)
        text.addWidget(self.state_reason)
        text.addWidget(self.state_detail)
        row.addWidget(self.state_icon)
        row.addLayout(text, 1)
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self._pause_or_resume)
        self.snooze_button = QPushButton("Snooze")
        snooze_menu = QMenu(self.snooze_button)
        for minutes, label in SNOOZE_CHOICES:
            snooze_menu.addAction(label).triggered.connect(lambda _c=False, m=minutes: self.app.snooze(m))
        self.snooze_button.setMenu(snooze_menu)
        chat = QPushButton("Chat")
        chat.clicked.connect(self.app.show_chat)
        settings = QPushButton("Settings")
        settings.clicked.connect(self.app.show_settings)
        for button in (self.pause_button, self.snooze_button, chat, settings):
            row.addWidget(button, 0, Qt.AlignmentFlag.AlignTop)
        return row

    def _benchmark_box(self) -> QGroupBox:
        box = QGroupBox("This computer")
        grid = QGridLayout(box)
        self.benchmark_label = QLabel("no benchmark yet")
        self.benchmark_label.setWordWrap(True)
        self.benchmark_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.measure_button = QPushButton("Measure again")
        self.measure_button.clicked.connect(self.measure)
        grid.addWidget(self.benchmark_label, 0, 0, 1, 2)
        grid.setRowStretch(1, 1)
        grid.addWidget(self.measure_button, 2, 1, Qt.AlignmentFlag.AlignRight)
        return box

    def _contribution_box(self) -> QGroupBox:
        box = QGroupBox("Contribution, last 30 days")
        layout = QVBoxLayout(box)
        self.contribution_label = QLabel("")
        self.contribution_label.setWordWrap(True)
        layout.addWidget(self.contribution_label)
        layout.addWidget(self.contribution_plot, 1)
        return box

    def _log_box(self) -> QGroupBox:
        box = QGroupBox("Log")
        layout = QVBoxLayout(box)
        self.log_source = QComboBox()
        self.log_source.addItems(["agent", "server"])
        self.log_source.currentTextChanged.connect(lambda _text: self.refresh_logs())
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log_view.setMaximumBlockCount(LOG_LINES * 2)
        row = QHBoxLayout()
        row.addWidget(QLabel("Source:"))
        row.addWidget(self.log_source)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addWidget(self.log_view)
        return box

    # refresh
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()
        self.timer.start()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.timer.stop()  # nothing is read while the window is closed; the tray keeps polling the status
        super().closeEvent(event)

    @Slot()
    def refresh(self) -> None:
        link = self.app.link
        link.call(lambda client: client.swarm_map(), self.show_map, self._unreachable)
        link.call(lambda client: client.contribution(30), self.show_contribution, self._unreachable)
        link.call(lambda client: client.get_benchmark(), self.show_benchmark, self._unreachable)
        self.refresh_logs()

    def refresh_logs(self) -> None:
        source = self.log_source.currentText()
        self.app.link.call(lambda client: client.logs(source, LOG_LINES), self.show_logs, self._unreachable)

    def measure(self) -> None:
        self.measure_button.setEnabled(False)
        self.measure_button.setText("Measuring...")

        def done(answer: BenchmarkAnswer) -> None:
            self.measure_button.setEnabled(True)
            self.measure_button.setText("Measure again")
            self.show_benchmark(answer)

        def failed(message: str) -> None:
            done(BenchmarkAnswer(detail=f"the benchmark failed: {message}"))

        self.app.link.call(lambda client: client.run_benchmark(refresh=True), done, failed)

    # showing answers
    def show_message(self, text: str) -> None:
        self.message.setText(text)

    @Slot(object)
    def show_view(self, view: View) -> None:
        self.state_icon.setPixmap(icon(view.state).pixmap(48, 48))
        self.state_title.setText(view.title)
        self.state_reason.setText(view.reason)
        if view.state == "error" and self.app.link.error:
            self.state_detail.setText("The dashboard shows the last answers it had and keeps trying.")

    @Slot(object)
    def show_status(self, status: Status) -> None:
        since = time.strftime("%H:%M", time.localtime(status.since))
        parts = [f"{status.mode} since {since}", span_text(status), f"{status.server.sessions} sessions open"]
        if status.server.restarts:
            parts.append(f"restarted {status.server.restarts} times")
        text = "; ".join(parts)
        if status.last_errors:
            last = status.last_errors[-1]
            text += f"\nlast error ({elapsed(last.time)} ago): {last.message}"
        for warning in status.warnings:
            text += f"\nwarning: {warning}"
        self.state_detail.setText(text)
        held = status.manual_pause or self.app.view.state == "snoozed"
        self.pause_button.setText("Resume" if held else "Pause")
        self.message.setText("")

    def show_map(self, swarm: SwarmMap) -> None:
        self.coverage.set_map(swarm)
        if swarm.num_blocks == 0:
            self.swarm_summary.setText(swarm.detail or "no reading of the swarm yet")
            return
        peers = len({server.peer_id for server in swarm.servers})
        gaps = (
            "every block is served"
            if not swarm.uncovered
            else f"<b style='color:#D23F3F'>{len(swarm.uncovered)} blocks nobody serves: {_ranges(swarm.uncovered)}</b>"
        )
        age = f", read {elapsed(swarm.read_at)} ago" if swarm.read_at else ""
        bottleneck = min(swarm.block_throughput, default=0.0)
        plural = "s" if peers != 1 else ""
        self.swarm_summary.setText(
            f"Swarm <b>{swarm.name}</b>, model <b>{swarm.model}</b>: {swarm.num_blocks} blocks, "
            f"{peers} server{plural}, slowest block {bottleneck:.1f} tokens/s; {gaps}{age}"
        )

    def show_contribution(self, contribution: Contribution) -> None:
        self.contribution_plot.set_contribution(contribution)
        hours = contribution.hours
        self.contribution_label.setText(
            f"<b>{contribution.tokens:,}</b> tokens served in <b>{contribution.sessions:,}</b> sessions; "
            f"{hours.get('server', 0.0):.1f} h lending, {hours.get('agent', 0.0):.1f} h online "
            f"({hours.get('full', 0.0):.1f} h full, {hours.get('reduced', 0.0):.1f} h reduced, "
            f"{hours.get('paused', 0.0):.1f} h paused)"
        )

    def show_benchmark(self, answer: BenchmarkAnswer) -> None:
        self.benchmark_label.setText(benchmark_html(answer))

    def show_logs(self, answer: LogsAnswer) -> None:
        bar = self.log_view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        self.log_view.setPlainText("\n".join(answer.lines) or f"({answer.file} is empty)")
        if at_end:
            bar.setValue(bar.maximum())

    def _unreachable(self, message: str) -> None:
        self.message.setText(message)

    def _pause_or_resume(self) -> None:
        if self.pause_button.text() == "Resume":
            self.app.resume()
        else:
            self.app.pause()


def benchmark_html(answer: BenchmarkAnswer) -> str:
    """The benchmark in plain words: accelerators, CPU, measured speed, and its age."""
    if answer.measured_at is None:
        return answer.detail or "not measured yet (the agent measures at its first start)"
    lines = []
    for accelerator in answer.accelerators:
        memory = f", {accelerator.memory_gb:.1f} GiB" if accelerator.memory_gb else ""
        lines.append(f"<b>{accelerator.name}</b>{memory}")
    if answer.cpu is not None:
        cpu = answer.cpu
        ram = f", {cpu.ram_gb:.0f} GiB RAM" if cpu.ram_gb else ""
        lines.append(f"CPU: {cpu.model} ({cpu.cores or '?'} cores, {cpu.threads or '?'} threads){ram}")
    if answer.compute is not None:
        compute = answer.compute
        lines.append(
            f"Serving {compute.model} on {compute.device} ({compute.dtype}): "
            f"<b>{compute.tokens_per_second:.1f}</b> tokens/s per block when chatting"
            + (
                f", {compute.forward_tokens_per_second:.0f} tokens/s in bulk"
                if compute.forward_tokens_per_second
                else ""
            )
        )
    if answer.network is not None and (answer.network.rtt_ms is not None or answer.network.bandwidth_mbps):
        network = answer.network
        rtt = f"{network.rtt_ms:.0f} ms round trip" if network.rtt_ms is not None else ""
        bandwidth = f"{network.bandwidth_mbps:.0f} Mbit/s" if network.bandwidth_mbps else ""
        lines.append("Network: " + ", ".join(part for part in (rtt, bandwidth) if part))
    lines.append(f"<span style='color:gray'>measured {elapsed(answer.measured_at)} ago</span>")
    return "<br>".join(lines)


def _ranges(blocks: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    parts, start = [], None
    for index, block in enumerate(blocks):
        if start is None:
            start = block
        if index + 1 == len(blocks) or blocks[index + 1] != block + 1:
            parts.append(str(start) if start == block else f"{start}-{block}")
            start = None
    return ", ".join(parts)
