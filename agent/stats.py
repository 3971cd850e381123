"""Contribution statistics in SQLite (data directory): tokens and sessions served, hours online and in each mode.

Kept per day so a dashboard can chart them; they survive restarts. One connection shared by the agent's threads
behind a lock (SQLite serializes writers anyway; the volume is a few writes a second at most).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    day TEXT PRIMARY KEY,            -- local date, YYYY-MM-DD
    tokens INTEGER NOT NULL DEFAULT 0,
    sessions INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS time_spent (
    day TEXT NOT NULL,
    what TEXT NOT NULL,              -- 'agent' (online), 'server' (serving), or a mode: full, reduced, paused
    seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, what)
);
"""


class StatsDB:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def add_served(self, tokens: int, sessions: int, when: float | None = None) -> None:
        if tokens <= 0 and sessions <= 0:
            return
        with self._lock:
            self._db.execute(
                "INSERT INTO served (day, tokens, sessions) VALUES (?, ?, ?) ON CONFLICT(day) DO UPDATE SET "
                "tokens = tokens + excluded.tokens, sessions = sessions + excluded.sessions",
                (_day(when), max(0, tokens), max(0, sessions)),
            )

    def add_time(self, what: str, seconds: float, when: float | None = None) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._db.execute(
                "INSERT INTO time_spent (day, what, seconds) VALUES (?, ?, ?) ON CONFLICT(day, what) DO UPDATE SET "
                "seconds = seconds + excluded.seconds",
                (_day(when), what, seconds),
            )

    def totals(self) -> tuple[int, int]:
        """Tokens and sessions served, all time."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(sessions), 0) FROM served").fetchone()
        return int(row[0]), int(row[1])

    def hours(self) -> dict[str, float]:
        """Hours online ('agent'), serving ('server') and in each mode, all time."""
        with self._lock:
            rows = self._db.execute("SELECT what, SUM(seconds) FROM time_spent GROUP BY what").fetchall()
        return {what: seconds / 3600 for what, seconds in rows}

    def days(self, count: int, now: float | None = None) -> list[tuple[str, int, int, float, float]]:
        """The last ``count`` days, oldest first, with gaps: (day, tokens, sessions, hours online, hours serving)."""
        now = time.time() if now is None else now
        wanted = [_day(now - offset * 86400) for offset in range(count - 1, -1, -1)]
        with self._lock:
            served = {
                day: (tokens, sessions)
                for day, tokens, sessions in self._db.execute(
                    "SELECT day, tokens, sessions FROM served WHERE day >= ?", (wanted[0],)
                )
            }
            spent = {
                (day, what): seconds
                for day, what, seconds in self._db.execute(
                    "SELECT day, what, seconds FROM time_spent WHERE day >= ? AND what IN ('agent', 'server')",
                    (wanted[0],),
                )
            }
        return [
            (
                day,
                *served.get(day, (0, 0)),
                spent.get((day, "agent"), 0.0) / 3600,
                spent.get((day, "server"), 0.0) / 3600,
            )
            for day in wanted
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _day(when: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(time.time() if when is None else when))
