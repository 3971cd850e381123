"""``ChatWindow``: a conversation with the swarm's model through the agent's chat API.

Tokens stream in as they come (``AgentLink.stream``, off the Qt thread); Stop replaces Send while an answer
streams, and Esc stops too. Regenerate and edit-and-resend add siblings in the conversation's message tree,
flipped through with the 2/3 arrows. The agent stores conversations; the window stores each finished answer
with its speed, time to first token and route, which show under it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut, QShowEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from agent.chat.schema import Conversation, MessageMeta, NewMessage
from gui.chat.branches import leaf_of, position, sibling
from gui.chat.conversation_list import ConversationList
from gui.chat.message_view import MessageView
from gui.chat.parameters import ParametersPanel
from gui.link import StreamHandle

if TYPE_CHECKING:
    from agent.chat_client import ChatDelta
    from gui.app import NectarApp

MODELS_REFRESH_MS = 10000
BANNER_STYLE = "background: #FDECEC; color: #8E1B1B; padding: 6px; border-radius: 4px;"
EDIT_STYLE = "background: #FFF6DC; padding: 6px; border-radius: 4px;"


class Composer(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line."""

    submitted = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setPlaceholderText("Ask anything (Enter sends, Shift+Enter for a new line, Esc stops an answer)")
        self.setMaximumHeight(110)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
            event.modifiers() & Qt.KeyboardModifier.ShiftModifier
        ):
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ChatWindow(QMainWindow):
    answer_grew = Signal(str)  # the streaming answer so far, at each token
    answer_finished = Signal(object)  # the conversation with the stored answer, or None when it failed

    def __init__(self, app: NectarApp):
        super().__init__()
        self.app, self.link = app, app.link
        self.conversation: Conversation | None = None
        self.stream: StreamHandle | None = None
        self.streaming_view: MessageView | None = None
        self.editing_id: int | None = None
        self._answer = ""
        self._meta: MessageMeta | None = None
        self._started = self._first_token = 0.0
        self.setWindowTitle("Nectar chat")
        self.resize(1180, 760)
        self._build()
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.escape)
        self.models_timer = QTimer(self)
        self.models_timer.setInterval(MODELS_REFRESH_MS)
        self.models_timer.timeout.connect(self.check_models)
        self.refresh_list()

    # layout
    def _build(self) -> None:
        self.sidebar = ConversationList()
        self.sidebar.chosen.connect(self.open_conversation)
        self.sidebar.new_requested.connect(self.new_chat)
        self.sidebar.rename_requested.connect(lambda cid: self.rename(cid))
        self.sidebar.delete_requested.connect(lambda cid: self.delete(cid))
        self.sidebar.search_changed.connect(lambda _text: self.refresh_list())
        self.banner = QLabel("")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet(BANNER_STYLE)
        self.banner.hide()
        self.messages = QWidget()
        self.messages_layout = QVBoxLayout(self.messages)
        self.messages_layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.messages)
        self.scroll.verticalScrollBar().rangeChanged.connect(self._follow)
        self.editing_label = QLabel("Editing your message: Enter sends it as a new branch; Esc cancels.")
        self.editing_label.setStyleSheet(EDIT_STYLE)
        self.editing_label.hide()
        self.composer = Composer()
        self.composer.submitted.connect(self.send)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send_or_stop)
        compose = QHBoxLayout()
        compose.addWidget(self.composer, 1)
        compose.addWidget(self.send_button, 0, Qt.AlignmentFlag.AlignBottom)
        export_md = QPushButton("Export Markdown")
        export_md.clicked.connect(lambda: self.export("markdown"))
        export_json = QPushButton("Export JSON")
        export_json.clicked.connect(lambda: self.export("json"))
        self.parameters_button = QPushButton("Parameters")
        self.parameters_button.setCheckable(True)
        self.parameters_button.setChecked(True)
        self.title = QLabel("<b>New chat</b>")
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        for button in (export_md, export_json, self.parameters_button):
            top.addWidget(button)
        center = QWidget()
        middle = QVBoxLayout(center)
        middle.addLayout(top)
        middle.addWidget(self.banner)
        middle.addWidget(self.scroll, 1)
        middle.addWidget(self.editing_label)
        middle.addLayout(compose)
        self.parameters = ParametersPanel()
        self.parameters.changed.connect(self._parameters_changed)
        self.parameters_button.toggled.connect(self.parameters.setVisible)
        splitter = QSplitter()
        splitter.addWidget(self.sidebar)
        splitter.addWidget(center)
        splitter.addWidget(self.parameters)
        splitter.setSizes([240, 660, 280])
        splitter.setStretchFactor(1, 1)
        self.setCentralWidget(splitter)
        self.status = QLabel("")
        self.statusBar().addWidget(self.status, 1)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.check_models()
        self.models_timer.start()
        self.composer.setFocus()

    def closeEvent(self, event) -> None:
        self.models_timer.stop()
        super().closeEvent(event)

    # conversations
    def refresh_list(self) -> None:
        text = self.sidebar.search.text().strip()
        current = self.conversation.id if self.conversation else None
        if text:
            self.link.call(
                lambda c: c.search_conversations(text), lambda a: self.sidebar.show_hits(a.hits, current), self._say
            )
        else:
            self.link.call(
                lambda c: c.list_conversations(),
                lambda a: self.sidebar.show_conversations(a.conversations, current),
                self._say,
            )

    def open_conversation(self, conversation_id: int) -> None:
        if self.streaming:
            return
        self.link.call(lambda c: c.get_conversation(conversation_id), self.show_conversation, self._say)

    def new_chat(self) -> None:
        if self.streaming:
            return
        self.conversation = None
        self._cancel_edit()
        self._clear()
        self.title.setText("<b>New chat</b>")
        self.parameters.show_values("", type(self.parameters.values()[1])())
        self.composer.setFocus()
        self.refresh_list()

    def show_conversation(self, conversation: Conversation, upto: int | None = None) -> None:
        """Show the current branch (or the branch ending at ``upto``, while its next answer streams)."""
        self.conversation = conversation
        self._clear()
        self.title.setText(f"<b>{conversation.title or 'New chat'}</b>")
        self.parameters.show_values(conversation.system_prompt, conversation.sampling)
        for message in conversation.path(upto):
            view = MessageView(message.id, message.role, message.content)
            index, count = position(conversation, message.id)
            view.set_branches(index, count)
            if message.role == "assistant":
                view.set_meta(message.meta)
            view.previous_branch.connect(lambda mid: self.switch_branch(mid, -1))
            view.next_branch.connect(lambda mid: self.switch_branch(mid, +1))
            view.regenerate.connect(self.regenerate)
            view.edit.connect(self.edit)
            self._add_view(view)

    def rename(self, conversation_id: int, title: str | None = None) -> None:
        if title is None:
            title, ok = QInputDialog.getText(self, "Rename", "New name:")
            if not ok or not title.strip():
                return

        def renamed(conversation: Conversation) -> None:
            if self.conversation and self.conversation.id == conversation.id:
                self.title.setText(f"<b>{conversation.title}</b>")
                self.conversation = conversation
            self.refresh_list()

        self.link.call(lambda c: c.rename_conversation(conversation_id, title.strip()), renamed, self._say)

    def delete(self, conversation_id: int, confirm: bool = True) -> None:
        if confirm:
            answer = QMessageBox.question(self, "Delete", "Delete this conversation and every branch of it?")
            if answer != QMessageBox.StandardButton.Yes:
                return

        def deleted(_answer: object) -> None:
            if self.conversation and self.conversation.id == conversation_id:
                self.new_chat()
            self.refresh_list()

        self.link.call(lambda c: c.delete_conversation(conversation_id), deleted, self._say)

    def export(self, format: str, path: str | Path | None = None) -> None:
        """Export the conversation shown to Markdown (its current branch) or JSON (every branch)."""
        if self.conversation is None:
            self._say("Nothing to export yet.")
            return
        if path is None:
            suffix = "md" if format == "markdown" else "json"
            name = (self.conversation.title or "conversation").replace("/", "-")
            path, _filter = QFileDialog.getSaveFileName(self, "Export", f"{name}.{suffix}", f"*.{suffix}")
            if not path:
                return
        target, conversation_id = Path(path), self.conversation.id

        def write(text: str) -> None:
            try:
                target.write_text(text, encoding="utf-8")
            except OSError as error:
                self._say(f"cannot write {target}: {error.strerror}")
                return
            self._say(f"exported to {target}")

        self.link.call(lambda c: c.export_conversation(conversation_id, format), write, self._say)

    # sending and answering
    @property
    def streaming(self) -> bool:
        return self.stream is not None

    def send(self, text: str | None = None) -> None:
        text = (self.composer.toPlainText() if text is None else text).strip()
        if not text or self.streaming:
            return
        self.composer.clear()
        system_prompt, sampling = self.parameters.values()
        conversation, editing = self.conversation, self.editing_id
        self._cancel_edit()

        def store(client) -> Conversation:
            if conversation is None:
                first = NewMessage(role="user", content=text, parent_id="current")
                return client.create_conversation(system_prompt=system_prompt, sampling=sampling, messages=[first])
            parent = conversation.message(editing).parent_id if editing is not None else "current"
            client.append_message(conversation.id, "user", text, parent_id=parent)
            return client.get_conversation(conversation.id)

        def stored(updated: Conversation) -> None:
            self.show_conversation(updated)
            self.refresh_list()
            self.answer(updated.current_id)

        self._set_streaming_ui(True)
        self.link.call(store, stored, self._send_failed)

    def answer(self, parent_id: int | None) -> None:
        """Stream an answer to the branch ending at ``parent_id`` (a user message); stored as its child."""
        conversation = self.conversation
        if conversation is None or parent_id is None:
            return
        self.show_conversation(conversation, upto=parent_id)
        messages = conversation.chat_messages(parent_id)
        sampling = conversation.sampling
        self.streaming_view = MessageView(None, "assistant")
        self.streaming_view.set_meta(None, streaming=True)
        self._add_view(self.streaming_view)
        self._answer, self._meta = "", None
        self._started, self._first_token = time.monotonic(), 0.0
        self._set_streaming_ui(True)
        self.stream = self.link.stream(
            lambda client, _cancel: client.chat_stream(messages, **client.sampling_parameters(sampling)),
            self._on_delta,
            lambda stopped: self._on_done(parent_id, stopped),
            self._on_failed,
        )

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self._say("stopping...")

    def escape(self) -> None:
        if self.streaming:
            self.stop()
        elif self.editing_id is not None:
            self._cancel_edit()
            self.composer.clear()

    def regenerate(self, message_id: int) -> None:
        if self.conversation is None or self.streaming:
            return
        self.answer(self.conversation.message(message_id).parent_id)

    def edit(self, message_id: int) -> None:
        if self.conversation is None or self.streaming:
            return
        self.editing_id = message_id
        self.composer.setPlainText(self.conversation.message(message_id).content)
        self.editing_label.show()
        self.composer.setFocus()

    def switch_branch(self, message_id: int, step: int) -> None:
        if self.conversation is None or self.streaming:
            return
        target = sibling(self.conversation, message_id, step)
        if target is None:
            return
        leaf, conversation_id = leaf_of(self.conversation, target), self.conversation.id
        self.link.call(
            lambda c: c.change_conversation(conversation_id, current_id=leaf), self.show_conversation, self._say
        )

    def _on_delta(self, delta: ChatDelta) -> None:
        if delta.text:
            if not self._answer:
                self._first_token = time.monotonic()
            self._answer += delta.text
            self.streaming_view.set_text(self._answer)
            self.answer_grew.emit(self._answer)
        if delta.meta is not None:
            self._meta = delta.meta
            self.streaming_view.set_meta(delta.meta, streaming=True)

    def _on_done(self, parent_id: int, stopped: bool) -> None:
        self.stream = None
        conversation = self.conversation
        if conversation is None:
            return
        if not self._answer:
            self._finish(None, "stopped before the first token" if stopped else "the model answered nothing")
            self.show_conversation(conversation)
            return
        meta = self._local_meta(stopped)
        text = self._answer

        def store(client) -> Conversation:
            client.append_message(conversation.id, "assistant", text, parent_id=parent_id, meta=meta)
            return client.get_conversation(conversation.id)

        def stored(updated: Conversation) -> None:
            self.show_conversation(updated)
            self._finish(updated, "stopped" if stopped else "")
            self.refresh_list()

        self.link.call(store, stored, lambda message: self._finish(None, message))

    def _local_meta(self, stopped: bool) -> MessageMeta:
        """The agent's figures for the answer; what it could not send (a stopped answer) measured here."""
        meta = (self._meta or MessageMeta()).model_copy()
        if stopped:
            meta.finish_reason = "cancelled"
        if meta.time_to_first_token is None and self._first_token:
            meta.time_to_first_token = self._first_token - self._started
        if meta.completion_tokens is None:
            meta.completion_tokens = len(self._answer.split())  # words: the stream did not say its token count
        if meta.tokens_per_second is None and self._first_token:
            elapsed = max(time.monotonic() - self._first_token, 1e-3)
            meta.tokens_per_second = meta.completion_tokens / elapsed
        return meta

    def _on_failed(self, message: str) -> None:
        self.stream = None
        if self.streaming_view is not None:
            self.streaming_view.show_error(message)
        self._finish(None, "")
        self.check_models()

    def _send_failed(self, message: str) -> None:
        self._set_streaming_ui(False)
        self._say(message)

    def _finish(self, conversation: Conversation | None, message: str) -> None:
        self.streaming_view = None
        self._set_streaming_ui(False)
        self._say(message)
        self.answer_finished.emit(conversation)

    # the swarm's readiness
    def check_models(self) -> None:
        self.link.call(lambda c: c.models(), self._show_models, lambda message: self._show_banner(message))

    def _show_models(self, models: list) -> None:
        missing = [model for model in models if model.ready is False]
        if not missing:
            self._show_banner("")
            return
        model = missing[0]
        blocks = ", ".join(map(str, model.missing_blocks)) or "some"
        self._show_banner(
            f"The swarm cannot answer with {model.id} now: no server holds block(s) {blocks}. "
            "Answers wait for a server to take them, then fail with this message."
        )

    def _show_banner(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.setVisible(bool(text))

    # helpers
    def _parameters_changed(self) -> None:
        if self.conversation is None:
            return
        system_prompt, sampling = self.parameters.values()
        conversation_id = self.conversation.id

        def saved(conversation: Conversation) -> None:
            if self.conversation is not None and self.conversation.id == conversation.id:
                self.conversation = self.conversation.model_copy(
                    update={"system_prompt": conversation.system_prompt, "sampling": conversation.sampling}
                )
            self._say("parameters saved for this chat")

        self.link.call(
            lambda c: c.change_conversation(conversation_id, system_prompt=system_prompt, sampling=sampling),
            saved,
            self._say,
        )

    def _send_or_stop(self) -> None:
        if self.streaming:
            self.stop()
        else:
            self.send()

    def _set_streaming_ui(self, busy: bool) -> None:
        self.send_button.setText("Stop" if busy else "Send")
        for view in self.findChildren(MessageView):
            view.set_busy(busy)

    def _cancel_edit(self) -> None:
        self.editing_id = None
        self.editing_label.hide()

    def _add_view(self, view: MessageView) -> None:
        self.messages_layout.insertWidget(self.messages_layout.count() - 1, view)

    def _clear(self) -> None:
        while self.messages_layout.count() > 1:
            widget = self.messages_layout.takeAt(0).widget()
            if widget is not None:
                widget.hide()  # gone from the next paint, not only once Qt deletes it
                widget.setParent(None)
                widget.deleteLater()

    def _follow(self, _low: int, high: int) -> None:
        self.scroll.verticalScrollBar().setValue(high)  # keep the newest text in view while it streams

    def _say(self, message: str) -> None:
        self.status.setText(message)
