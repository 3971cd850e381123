"""``CoveragePlot``: the swarm's coverage drawn with QPainter: blocks along the x axis, each block's servers
stacked by the throughput they add, this machine's servers highlighted, and blocks nobody serves in red.

Below the bars, one lane per server span (joining or draining spans hatched), so a user sees both how much of
the model is served and who serves which part. Data: the agent's ``SwarmMap``.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from agent.api.models import SwarmMap, SwarmServer

OURS = QColor("#F2A516")
OURS_EDGE = QColor("#9A5B07")
GAP = QColor("#D23F3F")
OTHERS = [QColor(c) for c in ("#4C78A8", "#54A24B", "#B279A2", "#72B7B2", "#9D755D", "#8CD17D", "#5F7BB0")]
LANE_HEIGHT = 16
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, AXIS = 56, 12, 10, 22


class CoveragePlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.map = SwarmMap()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(180)

    def sizeHint(self) -> QSize:
        return QSize(640, 240)

    def set_map(self, swarm: SwarmMap) -> None:
        self.map = swarm
        lanes = len(swarm.servers)
        self.setMinimumHeight(150 + lanes * (LANE_HEIGHT + 4))
        self.update()

    def colour_of(self, server: SwarmServer) -> QColor:
        if server.ours:
            return OURS
        peers = sorted({item.peer_id for item in self.map.servers if not item.ours})
        return OTHERS[peers.index(server.peer_id) % len(OTHERS)] if server.peer_id in peers else OTHERS[0]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        swarm = self.map
        if swarm.num_blocks == 0:
            painter.setPen(self.palette().placeholderText().color())
            text = swarm.detail or "no reading of the swarm yet"
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)
            return
        lanes = len(swarm.servers)
        lanes_height = lanes * (LANE_HEIGHT + 4)
        plot = QRectF(
            MARGIN_LEFT,
            MARGIN_TOP,
            self.width() - MARGIN_LEFT - MARGIN_RIGHT,
            self.height() - MARGIN_TOP - AXIS - lanes_height - 8,
        )
        width = plot.width() / swarm.num_blocks
        top = max(swarm.block_throughput, default=0.0) or 1.0
        self._draw_axes(painter, plot, top)
        online = [server for server in swarm.servers if server.state == "online"]
        gaps = set(swarm.uncovered)
        for block in range(swarm.num_blocks):
            x = plot.left() + block * width
            if block in gaps:
                painter.fillRect(
                    QRectF(x, plot.top(), width, plot.height()), QColor(GAP.red(), GAP.green(), GAP.blue(), 70)
                )
                painter.fillRect(QRectF(x, plot.bottom() - 6, width, 6), GAP)
                continue
            y = plot.bottom()
            for server in online:
                if not server.start <= block < server.end:
                    continue
                height = plot.height() * server.throughput / top if server.throughput else 2.0
                rect = QRectF(x + 1, y - height, max(1.0, width - 2), height)
                painter.fillRect(rect, self.colour_of(server))
                if server.ours:
                    painter.setPen(QPen(OURS_EDGE, 1.5))
                    painter.drawRect(rect)
                y -= height
        self._draw_block_axis(painter, plot, width)
        self._draw_lanes(painter, plot, width, plot.bottom() + AXIS + 6)

    def _draw_axes(self, painter: QPainter, plot: QRectF, top: float) -> None:
        text = self.palette().text().color()
        grid = QColor(text)
        grid.setAlpha(40)
        painter.setFont(_small_font(painter))
        for fraction in (0.0, 0.5, 1.0):
            y = plot.bottom() - plot.height() * fraction
            painter.setPen(QPen(grid, 1))
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(text)
            label = f"{top * fraction:.0f}" if top >= 10 else f"{top * fraction:.1f}"
            painter.drawText(QRectF(0, y - 8, MARGIN_LEFT - 6, 16), Qt.AlignmentFlag.AlignRight, label)
        painter.save()
        painter.translate(10, plot.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-50, -8, 100, 16), Qt.AlignmentFlag.AlignCenter, "tokens/s")
        painter.restore()

    def _draw_block_axis(self, painter: QPainter, plot: QRectF, width: float) -> None:
        painter.setPen(self.palette().text().color())
        blocks = self.map.num_blocks
        step = max(1, round(blocks / max(1, plot.width() / 40)))
        for block in range(0, blocks, step):
            x = plot.left() + block * width
            painter.drawText(
                QRectF(x - 20 + width / 2, plot.bottom() + 2, 40, 14), Qt.AlignmentFlag.AlignHCenter, str(block)
            )
        painter.drawText(QRectF(0, plot.bottom() + 2, MARGIN_LEFT - 6, 14), Qt.AlignmentFlag.AlignRight, "block")

    def _draw_lanes(self, painter: QPainter, plot: QRectF, width: float, y: float) -> None:
        for server in self.map.servers:
            rect = QRectF(plot.left() + server.start * width, y, (server.end - server.start) * width, LANE_HEIGHT)
            colour = self.colour_of(server)
            if server.state == "online":
                painter.fillRect(rect, colour)
            else:
                painter.fillRect(rect, QBrush(colour, Qt.BrushStyle.BDiagPattern))
            if server.ours:
                painter.setPen(QPen(OURS_EDGE, 2))
                painter.drawRect(rect)
            painter.setPen(self.palette().text().color())
            who = "this computer" if server.ours else server.peer_id[-8:]
            state = "" if server.state == "online" else f", {server.state}"
            painter.drawText(
                QRectF(0, y, MARGIN_LEFT - 6, LANE_HEIGHT),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                f"{server.start}-{server.end - 1}",
            )
            label = f"{who}: {server.throughput:.1f} tokens/s{state}"
            inside = painter.fontMetrics().horizontalAdvance(label) + 8 < rect.width()
            painter.setPen(QColor("#000000") if inside else self.palette().text().color())
            target = (
                QRectF(rect.left() + 4, y, rect.width(), LANE_HEIGHT)
                if inside
                else QRectF(rect.right() + 4, y, plot.right() - rect.right(), LANE_HEIGHT)
            )
            painter.drawText(target, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, label)
            y += LANE_HEIGHT + 4


def _small_font(painter: QPainter) -> QFont:
    font = QFont(painter.font())
    font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
    return font
