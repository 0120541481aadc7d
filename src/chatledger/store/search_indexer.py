"""The full-text index, filled behind the recorder rather than inside its transactions.

FTS5 is the costliest part of recording (tokenizing, then writing a segment at every commit), and it
costs far less per row in big transactions: indexing one exchange on its own costs about as much as
recording it. So the writer commits the exchange rows (and releases the responses waiting on them)
first, and this indexer adds the text later in its own transactions: once `min_rows` rows wait, or
the oldest has waited `idle_delay` seconds and the writer has nothing else to do, or `max_delay`
seconds in any case; at most `chunk` rows per transaction, so the write lock (which the next batch
of responses waits for) is never held long. Search therefore lags the rows by up to about a second.
A watermark in `metadata` (`search_indexed_through`, the highest response id indexed) lets a
restarted gateway index from the stored rows whatever a crash left out.
"""

from __future__ import annotations

import sqlite3
import time

import orjson

from chatledger.store.rows import answer_text, prompt_text

# Only rows that still exist and are not indexed yet: several worker processes share one index,
# and each catches up from the same watermark after a restart.
INSERT_SEARCH = ("INSERT INTO search_index (rowid, prompt, response) "
                 "SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM responses WHERE id = ?1) "
                 "AND NOT EXISTS (SELECT 1 FROM search_index WHERE rowid = ?1)")
SET_WATERMARK = ("INSERT INTO metadata (key, value, updated_at) VALUES ('search_indexed_through', ?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at")
CATCH_UP_CHUNK = 2000


def _endpoint(path: str) -> str:
    return "chat" if path.endswith("chat/completions") else path.rsplit("/", 1)[-1]


def _loads(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class SearchIndexer:
    def __init__(self, connection: sqlite3.Connection, *, min_rows: int = 256, chunk: int = 256,
                 idle_delay: float = 0.2, max_delay: float = 1.0) -> None:
        self._min_rows = min_rows
        self._chunk = chunk
        self._idle_delay = idle_delay
        self._max_delay = max_delay
        self._backlog: list[tuple[int, str, str]] = []
        self._oldest = 0.0
        row = connection.execute("SELECT value FROM metadata WHERE key = 'search_indexed_through'").fetchone()
        # Rows above the watermark that are not in the backlog were committed before a crash.
        self._catch_up_after: int | None = int(row[0]) if row else 0

    def add(self, rows: list[tuple[int, str, str]]) -> None:
        if rows and not self._backlog:
            self._oldest = time.monotonic()
        self._backlog.extend(rows)

    def due(self, idle: bool) -> bool:
        if self._catch_up_after is not None:
            return True
        if not self._backlog:
            return False
        waited = time.monotonic() - self._oldest
        return len(self._backlog) >= self._min_rows or waited >= (self._idle_delay if idle else self._max_delay)

    def due_in(self) -> float | None:
        """Seconds until the backlog is due once the writer is idle (None: nothing waits)."""
        if self._catch_up_after is not None:
            return 0.0
        if not self._backlog:
            return None
        return max(0.0, self._oldest + self._idle_delay - time.monotonic())

    def drain(self, connection: sqlite3.Connection) -> None:
        """Index everything now (at shutdown)."""
        while self._catch_up_after is not None or self._backlog:
            self.run(connection)

    def run(self, connection: sqlite3.Connection) -> None:
        """Index one chunk, in its own transaction. The caller maps sqlite3 errors (the backlog stays)."""
        if self._catch_up_after is not None:
            self._catch_up(connection)
            return
        rows = self._backlog[:self._chunk]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(INSERT_SEARCH, rows)
            connection.execute(SET_WATERMARK, (str(max(row[0] for row in rows)), int(time.time() * 1000)))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        del self._backlog[:len(rows)]
        if self._backlog:
            # What is left waits from now: the next chunk goes after the next batch, or when quiet.
            self._oldest = time.monotonic() - self._idle_delay

    def _catch_up(self, connection: sqlite3.Connection) -> None:
        after = self._catch_up_after
        assert after is not None
        pending = {row[0] for row in self._backlog}
        rows = connection.execute(
            "SELECT s.id, q.path, q.openai_request, s.openai_response FROM responses s "
            "JOIN requests q ON q.id = s.request_id WHERE s.id > ? ORDER BY s.id LIMIT ?",
            (after, CATCH_UP_CHUNK)).fetchall()
        found = [(row_id, prompt_text(_loads(request), _endpoint(path)), answer_text(_loads(response)))
                 for row_id, path, request, response in rows if row_id not in pending]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(INSERT_SEARCH, found)
            if rows:
                connection.execute(SET_WATERMARK, (str(rows[-1][0]), int(time.time() * 1000)))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._catch_up_after = rows[-1][0] if len(rows) == CATCH_UP_CHUNK else None
