"""Conversations in SQLite (``chat.sqlite`` in the data directory): one row per conversation, one per message.

Messages form a tree through ``parent_id`` (see ``schema.py``); deleting a message deletes its descendants,
deleting a conversation deletes its messages. One connection shared by the API's threads behind a lock, as in
``agent/stats.py``. Expected refusals (an unknown id, a parent from another conversation) raise ``NotFound`` or
``ValueError`` with a one-line message.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from agent.chat.schema import (
    Conversation,
    ConversationChange,
    ConversationList,
    ConversationSummary,
    Message,
    MessageMeta,
    NewConversation,
    NewMessage,
    Sampling,
    SearchHit,
)

SCHEMA = """
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL DEFAULT '',
    system_prompt TEXT NOT NULL DEFAULT '',
    sampling TEXT NOT NULL DEFAULT '{}',      -- JSON of schema.Sampling
    current_id INTEGER,                       -- the leaf message shown
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',          -- JSON of schema.MessageMeta
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""
TITLE_LENGTH = 60
SNIPPET_CONTEXT = 40


class NotFound(LookupError):
    """An id that does not exist; the API answers 404."""


class ConversationStore:
    def __init__(self, path: Path, clock=time.time):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.clock = path, clock
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing (the connection is in autocommit mode otherwise)."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # conversations
    def create(self, request: NewConversation) -> Conversation:
        now = self.clock()
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "INSERT INTO conversations (title, system_prompt, sampling, created, updated) VALUES (?, ?, ?, ?, ?)",
                (request.title.strip(), request.system_prompt, request.sampling.model_dump_json(), now, now),
            )
            conversation_id = int(cursor.lastrowid)
            for message in request.messages:
                self._append(conversation_id, message)
        return self.get(conversation_id)

    def list_conversations(self, limit: int = 50, offset: int = 0) -> ConversationList:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count "
                "FROM conversations c ORDER BY updated DESC, id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
        return ConversationList(conversations=[_summary(row) for row in rows], total=int(total))

    def get(self, conversation_id: int) -> Conversation:
        with self._lock:
            row = self._row(conversation_id)
            messages = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
            ).fetchall()
        return Conversation(
            **_summary(row, len(messages)).model_dump(),
            system_prompt=row["system_prompt"],
            sampling=Sampling.model_validate_json(row["sampling"]),
            current_id=row["current_id"],
            messages=[_message(message) for message in messages],
        )

    def change(self, conversation_id: int, request: ConversationChange) -> Conversation:
        fields: dict[str, object] = {}
        if request.title is not None:
            fields["title"] = request.title.strip()
        if request.system_prompt is not None:
            fields["system_prompt"] = request.system_prompt
        if request.sampling is not None:
            fields["sampling"] = request.sampling.model_dump_json()
        with self._lock, self._transaction():
            self._row(conversation_id)
            if request.current_id is not None:
                self._own_message(conversation_id, request.current_id, "current_id")
                fields["current_id"] = request.current_id
            if fields:
                fields["updated"] = self.clock()
                assignments = ", ".join(f"{name} = ?" for name in fields)
                self._db.execute(
                    f"UPDATE conversations SET {assignments} WHERE id = ?", (*fields.values(), conversation_id)
                )
        return self.get(conversation_id)

    def delete(self, conversation_id: int) -> int:
        with self._lock, self._transaction():
            self._row(conversation_id)
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return 1

    # messages
    def append(self, conversation_id: int, request: NewMessage) -> Message:
        with self._lock, self._transaction():
            self._row(conversation_id)
            return self._append(conversation_id, request)

    def delete_message(self, conversation_id: int, message_id: int) -> int:
        """Delete a message and every reply below it; the current leaf moves to its parent if it was below."""
        with self._lock, self._transaction():
            message = self._own_message(conversation_id, message_id, "message_id")
            doomed = self._descendants(message_id)
            current = self._row(conversation_id)["current_id"]
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            if current in doomed:
                self._set_current(conversation_id, message["parent_id"])
        return len(doomed)

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Titles and messages containing ``text`` (any case), newest conversations first."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            titles = self._db.execute(
                "SELECT id, title, updated FROM conversations WHERE title LIKE ? ESCAPE '\\' "
                "ORDER BY updated DESC LIMIT ?",
                (pattern, limit),
            ).fetchall()
            messages = self._db.execute(
                "SELECT m.id, m.conversation_id, m.role, m.content, c.title, c.updated FROM messages m "
                "JOIN conversations c ON c.id = m.conversation_id WHERE m.content LIKE ? ESCAPE '\\' "
                "ORDER BY c.updated DESC, m.id LIMIT ?",
                (pattern, limit),
            ).fetchall()
        hits = [
            SearchHit(conversation_id=r["id"], title=r["title"], snippet=r["title"], updated=r["updated"])
            for r in titles
        ]
        hits += [
            SearchHit(
                conversation_id=r["conversation_id"],
                title=r["title"],
                message_id=r["id"],
                role=r["role"],
                snippet=_snippet(r["content"], text),
                updated=r["updated"],
            )
            for r in messages
        ]
        hits.sort(key=lambda hit: hit.updated, reverse=True)  # stable: a conversation's title hit stays first
        return hits[:limit]

    # internals (callers hold the lock)
    def _row(self, conversation_id: int) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise NotFound(f"no conversation {conversation_id}")
        return row

    def _own_message(self, conversation_id: int, message_id: int, param: str) -> sqlite3.Row:
        row = self._db.execute(
            "SELECT * FROM messages WHERE id = ? AND conversation_id = ?", (message_id, conversation_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"{param}: conversation {conversation_id} has no message {message_id}")
        return row

    def _append(self, conversation_id: int, request: NewMessage) -> Message:
        row = self._row(conversation_id)
        parent = row["current_id"] if request.parent_id == "current" else request.parent_id
        if parent is not None:
            self._own_message(conversation_id, parent, "parent_id")
        now = self.clock()
        cursor = self._db.execute(
            "INSERT INTO messages (conversation_id, parent_id, role, content, meta, created) VALUES (?, ?, ?, ?, ?, ?)",
            (conversation_id, parent, request.role, request.content, request.meta.model_dump_json(), now),
        )
        message_id = int(cursor.lastrowid)
        self._set_current(conversation_id, message_id)
        if not row["title"] and request.role == "user":
            self._db.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (_title(request.content), conversation_id)
            )
        created = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _message(created)

    def _set_current(self, conversation_id: int, message_id: int | None) -> None:
        self._db.execute(
            "UPDATE conversations SET current_id = ?, updated = ? WHERE id = ?",
            (message_id, self.clock(), conversation_id),
        )

    def _descendants(self, message_id: int) -> set[int]:
        rows = self._db.execute(
            "WITH RECURSIVE below(id) AS (SELECT ? UNION ALL SELECT m.id FROM messages m JOIN below ON m.parent_id = "
            "below.id) SELECT id FROM below",
            (message_id,),
        ).fetchall()
        return {int(row[0]) for row in rows}


def _summary(row: sqlite3.Row, message_count: int | None = None) -> ConversationSummary:
    count = row["message_count"] if message_count is None else message_count
    return ConversationSummary(
        id=row["id"], title=row["title"], created=row["created"], updated=row["updated"], message_count=count
    )


def _message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        conversation_id=row["conversation_id"],
        parent_id=row["parent_id"],
        role=row["role"],
        content=row["content"],
        created=row["created"],
        meta=MessageMeta.model_validate(json.loads(row["meta"])),
    )


def _title(text: str) -> str:
    """A title from the first question: its first line, cut at a word near ``TITLE_LENGTH`` characters."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "") or "Conversation"
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line.rfind(" ", 0, TITLE_LENGTH)
    return line[: cut if cut > TITLE_LENGTH // 2 else TITLE_LENGTH].rstrip() + "…"


def _snippet(content: str, text: str) -> str:
    at = content.lower().find(text.lower())
    if at < 0:
        return content[: 2 * SNIPPET_CONTEXT]
    start, end = max(0, at - SNIPPET_CONTEXT), min(len(content), at + len(text) + SNIPPET_CONTEXT)
    return ("…" if start else "") + content[start:end].replace("\n", " ") + ("…" if end < len(content) else "")
