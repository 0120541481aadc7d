"""The SQLite search index: an FTS5 table in a file of its own beside the ledger, filled behind it.

Tokenizing costs more than recording (a 2 KB exchange takes FTS5 about as long as writing both of its
rows), and an FTS5 table in the ledger would hold the ledger's one write lock while it works, so
every response waiting for its commit would wait for the indexer too. Here the index is derived data
in `<ledger>-search.db`: the indexer reads committed rows from the ledger (`responses.id` above its
watermark: ids are handed out under the ledger's write lock, so they commit in order) and writes
them into its own file, in its own transactions. The file can be deleted at any time; it is rebuilt.

It knows its ledger by the ledger's `metadata.ledger_id`, and starts over when that changes or when
its watermark is past the ledger's newest response (an older backup was restored). Rows deleted from
the ledger leave the index with them: the query API hands their ids to the indexer (`forget`), a
deletion racing with the indexer is caught by the check that follows each chunk, and rows deleted
some other way are found at the next start (`tidy`). Searches join the ledger, so they never show a
row the ledger no longer has, even before the index has caught up.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy import event

from chatledger.store.engine import configure_sqlite_connection
from chatledger.store.rows import answer_text, prompt_text

log = logging.getLogger("chatledger.search")

SCHEMA = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS search_index USING fts5("
    "prompt, response, tokenize = 'unicode61 remove_diacritics 2')",
    "CREATE TABLE IF NOT EXISTS search_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
READ_ROWS = ("SELECT s.id, q.path, q.openai_request, s.openai_response FROM responses s "
             "JOIN requests q ON q.id = s.request_id WHERE s.id > ? ORDER BY s.id LIMIT ?")
INSERT = "INSERT OR REPLACE INTO search_index (rowid, prompt, response) VALUES (?, ?, ?)"
SET_STATE = "INSERT INTO search_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


def search_path(ledger: Path) -> Path:
    """Where the search index of a ledger file lives: `data/chatledger.db` -> `data/chatledger-search.db`."""
    return ledger.with_name(f"{ledger.stem}-search{ledger.suffix or '.db'}")


def _loads(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _endpoint(path: str) -> str:
    return "chat" if path.endswith("chat/completions") else path.rsplit("/", 1)[-1]


def document(path: str, request: str | None, response: str | None) -> tuple[str, str]:
    """The searchable text of an exchange: this turn's prompt and the answer."""
    return prompt_text(_loads(request), _endpoint(path)), answer_text(_loads(response))


class SQLiteSearchIndex:
    def __init__(self, ledger: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000) -> None:
        self.ledger_path = ledger
        self.path = search_path(ledger)
        self._ledger = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
        configure_sqlite_connection(self._ledger, synchronous, busy_timeout_ms)
        self._ledger.execute("PRAGMA query_only=ON")
        self._index = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        configure_sqlite_connection(self._index, synchronous, busy_timeout_ms)
        self.watermark = self._open()

    def _state(self, key: str) -> str | None:
        row = self._index.execute("SELECT value FROM search_state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _open(self) -> int:
        for statement in SCHEMA:
            self._index.execute(statement)
        row = self._ledger.execute("SELECT value FROM metadata WHERE key = 'ledger_id'").fetchone()
        ledger_id = row[0] if row else ""
        watermark = int(self._state("indexed_through") or 0)
        newest = self._ledger.execute("SELECT COALESCE(MAX(id), 0) FROM responses").fetchone()[0]
        if self._state("ledger_id") != ledger_id or watermark > newest:
            if watermark:
                log.warning("search index %s belongs to another ledger (or an older one): rebuilding it", self.path)
            self._index.execute("BEGIN IMMEDIATE")
            self._index.execute("DELETE FROM search_index")
            self._index.execute(SET_STATE, ("ledger_id", ledger_id))
            self._index.execute(SET_STATE, ("indexed_through", "0"))
            self._index.execute("COMMIT")
            watermark = 0
        return watermark

    def backlog(self) -> int:
        """Responses in the ledger not indexed yet (an upper bound: ids may have gaps)."""
        newest = self._ledger.execute("SELECT COALESCE(MAX(id), 0) FROM responses").fetchone()[0]
        return max(0, newest - self.watermark)

    def index_next(self, limit: int) -> int:
        """Index up to `limit` rows past the watermark, in one transaction; returns how many were read.
        The watermark is read under the index's write lock, so indexers in several worker processes
        take turns on the same file instead of indexing the same rows."""
        index = self._index
        index.execute("BEGIN IMMEDIATE")
        try:
            self.watermark = int(self._state("indexed_through") or 0)
            rows = self._ledger.execute(READ_ROWS, (self.watermark, limit)).fetchall()
            if not rows:
                index.execute("COMMIT")
                return 0
            documents = []
            for row_id, path, request, response in rows:
                documents.append((row_id, *document(path, request, response)))
                # Give the GIL back between rows: this thread runs behind the event loop, never in its way.
                time.sleep(0)
            index.executemany(INSERT, documents)
            index.execute(SET_STATE, ("indexed_through", str(rows[-1][0])))
            index.execute("COMMIT")
        except BaseException:
            if index.in_transaction:
                index.execute("ROLLBACK")
            raise
        self.watermark = rows[-1][0]
        self._drop_deleted([row[0] for row in rows])
        return len(rows)

    def catch_up(self, chunk: int = 2000) -> int:
        """Index everything there is now (for the CLI, after an import)."""
        total = 0
        while count := self.index_next(chunk):
            total += count
        return total

    def tidy(self, chunk: int = 10_000) -> int:
        """Drop index rows whose response left the ledger some other way than `forget` (SQL typed by
        hand, a crash between the two deletes); returns how many. Counting first keeps it cheap when
        the two agree, as they do unless something deleted rows behind the gateway's back."""
        indexed = self._index.execute("SELECT COUNT(*) FROM search_index").fetchone()[0]
        present = self._ledger.execute("SELECT COUNT(*) FROM responses WHERE id <= ?", (self.watermark,)).fetchone()[0]
        if indexed <= present:
            return 0
        removed, after = 0, 0
        while ids := [row[0] for row in self._index.execute(
                "SELECT rowid FROM search_index WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, chunk))]:
            kept = {row[0] for row in self._ledger.execute(
                "SELECT id FROM responses WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))}
            gone = [(row_id,) for row_id in ids if row_id not in kept]
            if gone:
                self._index.executemany("DELETE FROM search_index WHERE rowid = ?", gone)
                removed += len(gone)
            after = ids[-1]
            time.sleep(0)
        if removed:
            log.info("search index: dropped %d rows whose responses were deleted", removed)
        return removed

    def _drop_deleted(self, row_ids: list[int]) -> None:
        """Rows deleted from the ledger while this chunk was being indexed leave the index too."""
        placeholders = ", ".join("?" * len(row_ids))
        present = {row[0] for row in self._ledger.execute(
            f"SELECT id FROM responses WHERE id IN ({placeholders})", row_ids)}
        gone = [(row_id,) for row_id in row_ids if row_id not in present]
        if gone:
            self._index.executemany("DELETE FROM search_index WHERE rowid = ?", gone)

    def forget(self, response_ids: list[int]) -> None:
        """Take responses deleted from the ledger out of the index."""
        index = self._index
        index.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(response_ids), 500):
                chunk = response_ids[start:start + 500]
                index.execute(f"DELETE FROM search_index WHERE rowid IN ({', '.join('?' * len(chunk))})", chunk)
            index.execute("COMMIT")
        except BaseException:
            if index.in_transaction:
                index.execute("ROLLBACK")
            raise

    def close(self) -> None:
        for connection in (self._ledger, self._index):
            with contextlib.suppress(sqlite3.Error):
                connection.close()


def attach_on_checkout(engine: sa.Engine, path: Path) -> None:
    """Every connection the engine hands out sees the index as `search` (ATTACH, once per connection,
    done outside any transaction, where SQLite allows it)."""

    @event.listens_for(engine, "checkout")
    def _attach(dbapi_connection: sqlite3.Connection, record: object, proxy: object) -> None:
        info = record.info  # type: ignore[attr-defined]
        if info.get("search_attached") != str(path):
            dbapi_connection.execute("ATTACH DATABASE ? AS search", (str(path),))
            info["search_attached"] = str(path)
