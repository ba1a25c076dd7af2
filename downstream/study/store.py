"""The answer store: one SQLite file per study (``STUDY/answers.sqlite``).

One row per judgement (rater, pair, choice, response time), committed as each answer
arrives. WAL mode lets the report read while raters write; every call opens its own
short connection, so the web server's threads never share one. ``UNIQUE(rater, pair)``
makes a re-sent answer (a double click, a retry after a dropped connection) a no-op
instead of a second vote: no answer duplicated, and retries are safe, so none is lost.
"""
from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS raters (
    num INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order; the rater's index is num - 1
    id TEXT UNIQUE NOT NULL,                -- random, the rater's resume key
    created REAL NOT NULL,                  -- unix time of consent
    user_agent TEXT,
    viewport TEXT                           -- CSS pixels, e.g. 390x844: who judged on a phone
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL REFERENCES raters(id),
    pair TEXT NOT NULL,
    kind TEXT NOT NULL,                     -- test | sanity | practice
    method TEXT NOT NULL,
    position INTEGER NOT NULL,              -- trial number in the rater's plan (0-based)
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right')),  -- the side called fake
    fake TEXT NOT NULL CHECK (fake IN ('left', 'right')),      -- the side that was fake
    correct INTEGER NOT NULL,               -- 1: found the fake; 0: labelled the fake real
    response_ms REAL NOT NULL,              -- from the images hiding to the answer
    shown_ms REAL,                          -- exposure as measured in the browser
    created REAL NOT NULL,
    UNIQUE (rater, pair)
);
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def _connect(self, readonly: bool = False):
        if readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            # FULL: an answer acknowledged to the browser survives a power cut, not only a crash
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def init(self) -> None:
        """Create the tables and switch the file to WAL (a property of the file, kept)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode}); is it on a network file system?")
            conn.executescript(SCHEMA)

    def add_rater(self, user_agent: str = "", viewport: str = "") -> tuple[str, int]:
        """A new rater: (id, index). The index comes from the AUTOINCREMENT key, assigned
        under SQLite's write lock, so simultaneous arrivals get distinct, gapless indices."""
        rater = uuid.uuid4().hex
        with self._connect() as conn:
            cur = conn.execute("INSERT INTO raters (id, created, user_agent, viewport) VALUES (?, ?, ?, ?)",
                               (rater, time.time(), user_agent[:300], viewport[:40]))
            return rater, cur.lastrowid - 1

    def rater_index(self, rater: str) -> int | None:
        with self._connect() as conn:
            row = conn.execute("SELECT num FROM raters WHERE id = ?", (rater,)).fetchone()
        return None if row is None else row["num"] - 1

    def answered(self, rater: str) -> set[str]:
        with self._connect() as conn:
            return {r["pair"] for r in conn.execute("SELECT pair FROM judgements WHERE rater = ?", (rater,))}

    def add_judgement(self, rater: str, pair: dict, position: int, choice: str, response_ms: float,
                      shown_ms: float | None) -> bool:
        """Insert one judgement, committed before returning; False when this rater had
        already answered this pair (the first answer stands)."""
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO judgements (rater, pair, kind, method, position, choice, fake, correct, response_ms,"
                " shown_ms, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rater, pair) DO NOTHING",
                (rater, pair["id"], pair["kind"], pair["method"], position, choice, pair["fake"],
                 int(choice == pair["fake"]), response_ms, shown_ms, time.time()))
            return cur.rowcount == 1

    def raters(self) -> list[dict]:
        with self._connect(readonly=True) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM raters ORDER BY num")]

    def judgements(self) -> list[dict]:
        with self._connect(readonly=True) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM judgements ORDER BY id")]
