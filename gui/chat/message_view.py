"""``MessageView``: one message of the conversation: who, the Markdown text, the branch arrows when it has
siblings (regenerated answers, edited questions), its actions, and under an answer its speed and route.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import QGuiApplication, QResizeEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QTextBrowser, QVBoxLayout, QWidget

from agent.chat.schema import MessageMeta
from gui.chat.markdown import render

ROLE_NAMES = {"user": "You", "assistant": "Nectar", "system": "System"}
BUBBLES = {"user": "#EAF1FB", "assistant": "#FFFFFF", "error": "#FDECEC"}


class MarkdownBrowser(QTextBrowser):
    """A read-only rich-text view as tall as its text (the conversation scrolls, not each message)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().documentLayout().documentSizeChanged.connect(lambda _size: self._fit())
        self.setStyleSheet("background: transparent;")

    def _fit(self) -> None:
        self.setFixedHeight(int(self.document().size().height()) + 4)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.document().setTextWidth(self.viewport().width())
        self._fit()

    def sizeHint(self) -> QSize:
        return QSize(400, int(self.document().size().height()) + 4)


class MessageView(QFrame):
    """Signals carry the message id; the window does the work (through the agent)."""

    previous_branch = Signal(int)
    next_branch = Signal(int)
    regenerate = Signal(int)
    edit = Signal(int)

    def __init__(self, message_id: int | None, role: str, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.message_id, self.role, self.text = message_id, role, text
        self.code_blocks: list[str] = []
        self.setObjectName(f"message-{message_id}" if message_id is not None else "message-streaming")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._bubble(BUBBLES.get(role, "#FFFFFF"))
        self.who = QLabel(f"<b>{ROLE_NAMES.get(role, role)}</b>")
        self.body = MarkdownBrowser()
        self.body.anchorClicked.connect(self._link)
        self.footer = QLabel("")
        self.footer.setWordWrap(True)
        self.footer.setStyleSheet("color: #6B6B6B; font-size: 90%;")
        self.footer.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.footer.hide()
        self.actions = QHBoxLayout()
        self.actions.setContentsMargins(0, 0, 0, 0)
        self.branch_label = QLabel("")
        self.previous = self._button("‹", "Previous version", lambda: self.previous_branch.emit(self.message_id))
        self.next = self._button("›", "Next version", lambda: self.next_branch.emit(self.message_id))
        for widget in (self.previous, self.branch_label, self.next):
            widget.hide()
            self.actions.addWidget(widget)
        self.actions.addStretch(1)
        self.copy_button = self._button("Copy", "Copy the whole message", self.copy_all)
        self.actions.addWidget(self.copy_button)
        if role == "user":
            self.actions.addWidget(self._button("Edit", "Edit and send again (a new branch)", self._edit))
        elif role == "assistant":
            self.regenerate_button = self._button("Regenerate", "Answer again (a new branch)", self._regenerate)
            self.actions.addWidget(self.regenerate_button)
        top = QHBoxLayout()
        top.addWidget(self.who)
        top.addStretch(1)
        top.addLayout(self.actions)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addLayout(top)
        layout.addWidget(self.body)
        layout.addWidget(self.footer)
        self.set_text(text)

    def _bubble(self, colour: str) -> None:
        self.setStyleSheet(f"MessageView {{ background: {colour}; border: 1px solid #DADADA; border-radius: 8px; }}")

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.setFlat(True)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        button.clicked.connect(lambda _checked=False: slot())
        return button

    def set_text(self, text: str) -> None:
        self.text = text
        html, self.code_blocks = render(text) if text else ("<p style='color:#999'>…</p>", [])
        self.body.setHtml(html)

    def set_branches(self, index: int, count: int) -> None:
        """Show '2/3' arrows when the message has siblings."""
        visible = count > 1
        for widget in (self.previous, self.branch_label, self.next):
            widget.setVisible(visible)
        self.branch_label.setText(f"{index}/{count}")
        self.previous.setEnabled(index > 1)
        self.next.setEnabled(index < count)

    def set_meta(self, meta: MessageMeta | None, streaming: bool = False) -> None:
        text = meta_text(meta) if meta is not None else ""
        if streaming:
            text = text or "answering..."
        self.footer.setText(text)
        self.footer.setVisible(bool(text))

    def show_error(self, message: str) -> None:
        self.role = "error"
        self._bubble(BUBBLES["error"])
        self.who.setText("<b style='color:#C62828'>The swarm could not answer</b>")
        self.body.setPlainText(message)
        self.footer.hide()

    def set_busy(self, busy: bool) -> None:
        for button in self.findChildren(QPushButton):
            button.setEnabled(not busy)
        if not busy and self.branch_label.isVisible():
            index, count = (int(part) for part in self.branch_label.text().split("/"))
            self.set_branches(index, count)

    def copy_all(self) -> None:
        QGuiApplication.clipboard().setText(self.text)

    def _link(self, url: QUrl) -> None:
        if url.scheme() == "copy":
            index = int(url.path() or url.toString().split(":", 1)[1])
            QGuiApplication.clipboard().setText(self.code_blocks[index])

    def _edit(self) -> None:
        self.edit.emit(self.message_id)

    def _regenerate(self) -> None:
        self.regenerate.emit(self.message_id)


def meta_text(meta: MessageMeta) -> str:
    """'12.3 tokens/s · first token 0.41 s · 48 tokens · route 0-14 abcd1234 → 15-29 efgh5678' under an answer."""
    parts = []
    if meta.tokens_per_second is not None:
        parts.append(f"{meta.tokens_per_second:.1f} tokens/s")
    if meta.time_to_first_token is not None:
        parts.append(f"first token {meta.time_to_first_token:.2f} s")
    if meta.completion_tokens is not None:
        parts.append(f"{meta.completion_tokens} tokens")
    if meta.finish_reason == "cancelled":
        parts.append("stopped")
    elif meta.finish_reason == "length":
        parts.append("cut at the length limit")
    if meta.route:
        parts.append("route " + " → ".join(_hop(hop) for hop in meta.route))
    return " · ".join(parts)


def _hop(hop: str) -> str:
    """'0:15@12D3KooW...abcd' -> 'blocks 0-14 on ...abcd' (short peer ids, as the dashboard shows them)."""
    span, _, peer = hop.partition("@")
    start, _, end = span.partition(":")
    try:
        blocks = f"{int(start)}-{int(end) - 1}"
    except ValueError:
        blocks = span
    return f"{blocks} on {peer[-8:]}" if peer else hop
