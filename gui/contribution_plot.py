"""``ContributionPlot``: tokens served per day as bars and hours lending as a line, drawn with QPainter."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen, QPolygonF
from PySide6.QtWidgets import QWidget

from agent.api.models import Contribution

BARS = QColor("#F2A516")
LINE = QColor("#4C78A8")


class ContributionPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.contribution = Contribution()
        self.setMinimumHeight(140)

    def sizeHint(self) -> QSize:
        return QSize(360, 160)

    def set_contribution(self, contribution: Contribution) -> None:
        self.contribution = contribution
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        days = self.contribution.days
        text = self.palette().text().color()
        if not any(day.tokens or day.hours_serving for day in days):
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "nothing lent yet")
            return
        plot = QRectF(40, 22, self.width() - 80, self.height() - 42)
        most_tokens = max(day.tokens for day in days)
        most_hours = max(max(day.hours_serving for day in days), 1.0)
        width = plot.width() / len(days)
        for index, day in enumerate(days):
            height = plot.height() * day.tokens / max(most_tokens, 1)
            painter.fillRect(QRectF(plot.left() + index * width + 1, plot.bottom() - height, width - 2, height), BARS)
        points = QPolygonF(
            [
                QPointF(
                    plot.left() + (index + 0.5) * width, plot.bottom() - plot.height() * day.hours_serving / most_hours
                )
                for index, day in enumerate(days)
            ]
        )
        painter.setPen(QPen(LINE, 2))
        painter.drawPolyline(points)
        painter.setPen(text)
        painter.drawText(
            QRectF(0, 2, plot.left() + 200, 16), Qt.AlignmentFlag.AlignLeft, f"  tokens/day (max {most_tokens})"
        )
        painter.setPen(LINE)
        painter.drawText(
            QRectF(plot.right() - 200, 2, 200 + 38, 16),
            Qt.AlignmentFlag.AlignRight,
            f"hours lending (max {most_hours:.1f})  ",
        )
        painter.setPen(text)
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, 120, 16), Qt.AlignmentFlag.AlignLeft, days[0].day[5:])
        painter.drawText(QRectF(plot.right() - 120, plot.bottom() + 2, 120, 16), Qt.AlignmentFlag.AlignRight, "today")
