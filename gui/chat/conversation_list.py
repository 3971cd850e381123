"""``ConversationList``: the side panel: a search box over titles and messages, the conversations newest
first, and New, Rename and Delete. It only shows and asks; the window calls the agent.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from agent.chat.schema import ConversationSummary, SearchHit

SEARCH_DELAY_MS = 250


class ConversationList(QWidget):
    chosen = Signal(int)  # a conversation id
    new_requested = Signal()
    rename_requested = Signal(int)
    delete_requested = Signal(int)
    search_changed = Signal(str)  # '' : list everything

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        self._delay = QTimer(self)
        self._delay.setSingleShot(True)
        self._delay.setInterval(SEARCH_DELAY_MS)
        self._delay.timeout.connect(lambda: self.search_changed.emit(self.search.text().strip()))
        self.search.textChanged.connect(lambda _text: self._delay.start())
        self.items = QListWidget()
        self.items.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.items.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.items.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.items.customContextMenuRequested.connect(self._menu)
        self.items.itemActivated.connect(self._chosen)
        self.items.itemClicked.connect(self._chosen)
        new = QPushButton("New chat")
        new.clicked.connect(self.new_requested)
        rename = QPushButton("Rename")
        rename.clicked.connect(lambda: self._with_current(self.rename_requested))
        delete = QPushButton("Delete")
        delete.clicked.connect(lambda: self._with_current(self.delete_requested))
        buttons = QHBoxLayout()
        buttons.addWidget(rename)
        buttons.addWidget(delete)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(new)
        layout.addWidget(self.search)
        layout.addWidget(self.items, 1)
        layout.addLayout(buttons)

    def show_conversations(self, conversations: list[ConversationSummary], current: int | None) -> None:
        self._fill([(c.id, c.title or "New chat", f"{c.message_count} messages") for c in conversations], current)

    def show_hits(self, hits: list[SearchHit], current: int | None) -> None:
        seen: dict[int, tuple[int, str, str]] = {}
        for hit in hits:
            seen.setdefault(hit.conversation_id, (hit.conversation_id, hit.title or "New chat", hit.snippet))
        self._fill(list(seen.values()), current)

    def _fill(self, rows: list[tuple[int, str, str]], current: int | None) -> None:
        self.items.blockSignals(True)
        self.items.clear()
        for conversation_id, title, detail in rows:
            item = QListWidgetItem(title)
            item.setToolTip(detail)
            item.setData(Qt.ItemDataRole.UserRole, conversation_id)
            self.items.addItem(item)
            if conversation_id == current:
                self.items.setCurrentItem(item)
        self.items.blockSignals(False)

    def ids(self) -> list[int]:
        return [self.items.item(row).data(Qt.ItemDataRole.UserRole) for row in range(self.items.count())]

    def _chosen(self, item: QListWidgetItem) -> None:
        self.chosen.emit(item.data(Qt.ItemDataRole.UserRole))

    def _with_current(self, signal: Signal) -> None:
        item = self.items.currentItem()
        if item is not None:
            signal.emit(item.data(Qt.ItemDataRole.UserRole))

    def _menu(self, point) -> None:
        item = self.items.itemAt(point)
        if item is None:
            return
        conversation_id = item.data(Qt.ItemDataRole.UserRole)
        menu = QMenu(self)
        menu.addAction("Rename", lambda: self.rename_requested.emit(conversation_id))
        menu.addAction("Delete", lambda: self.delete_requested.emit(conversation_id))
        menu.exec(self.items.mapToGlobal(point))
