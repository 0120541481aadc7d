"""The SQLite side of the recorder: one connection, one `BEGIN IMMEDIATE` transaction per batch.

Row ids are allocated here, inside the write lock, so a batch goes in with `executemany` and no
per-row round trip (and ids commit in order, which the search index relies on). What the rows are
(sessions folded per batch, parent_id, cost, rollups) is decided by batch.py, shared with the
PostgreSQL sink. Search is not the recorder's business here: search_index.py reads the committed
rows into a file of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from chatledger.pricing import Pricer
from chatledger.store.batch import (
    FIND_REQUEST_COLUMNS,
    REQUEST_COLUMNS,
    RESPONSE_COLUMNS,
    SESSION_COLUMNS,
    BatchBuilder,
    BatchRows,
    OpenRequest,
    open_request,
)
from chatledger.store.checkpointer import Checkpointer
from chatledger.store.engine import configure_sqlite_connection
from chatledger.store.records import Record
from chatledger.store.rollups import UPSERT_USAGE, UPSERT_USAGE_DAILY
from chatledger.store.writer import TransientStoreError

# A session with requests in the batch: one row version for its new requests (message_count adds up)
# and its newest answer (parent_id) together, as each UPDATE rewrites the whole row.
UPSERT_SESSION = f"""
INSERT INTO sessions ({", ".join(SESSION_COLUMNS)}, parent_id)
VALUES ({", ".join("?" * (len(SESSION_COLUMNS) + 1))})
ON CONFLICT(id) DO UPDATE SET message_count = sessions.message_count + excluded.message_count,
                              updated_at = MAX(sessions.updated_at, excluded.updated_at),
                              expires_at = MAX(sessions.expires_at, excluded.expires_at),
                              parent_id = COALESCE(excluded.parent_id, sessions.parent_id)
"""

# Rows of (parent_id, chat_id, session id), for sessions with only answers in the batch. chat_id is set
# once, by its own statement, and only where the sink has not seen it set: SQLite rewrites the index
# entry of every column an UPDATE sets, changed or not (a random page of idx_sessions_chat_id).
ADVANCE_SESSION = "UPDATE sessions SET parent_id = ?1 WHERE id = ?3"
SET_CHAT_ID = "UPDATE sessions SET chat_id = ?2 WHERE id = ?3 AND chat_id IS NULL AND ?2 IS NOT NULL"
KNOWN_CHAT_IDS = 100_000
INSERT_SESSION_MODEL = ("INSERT INTO session_models (session_id, model, provider) VALUES (?, ?, ?) "
                        "ON CONFLICT DO NOTHING")

INSERT_REQUEST = f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
INSERT_RESPONSE = (f"INSERT INTO responses ({', '.join(RESPONSE_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(RESPONSE_COLUMNS))})")

# A checkpoint copies each page once however many commits rewrote it, and ends with an fsync of the
# database file: rarer, bigger checkpoints copy and sync far less per exchange (the same index and
# session pages change in every commit). The WAL's file shrinks back to WAL_KEPT_BYTES when it starts
# over, so a size past WAL_CHECKPOINT_BYTES means that much is still to checkpoint.
WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024
WAL_KEPT_BYTES = 16 * 1024 * 1024
WAL_HARD_LIMIT_BYTES = 512 * 1024 * 1024
WRITER_CACHE_KB = 16 * 1024


class WriterTurn:
    """Whose turn it is to write, among the recorders on one SQLite file (`--workers N`, a recorder
    process per worker): an flock on a file beside the database, held for each write transaction.
    Without it the writers meet on SQLite's own lock, whose busy handler sleeps 1, 2, 5, 10, 15...
    ms between tries, long after the holder has committed; here a waiter tries every half
    millisecond. Past `timeout_ms` the write fails as a locked database would (and is retried)."""

    POLL_S = 0.0005

    def __init__(self, path: Path, timeout_ms: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._timeout_s = timeout_ms / 1000

    def __enter__(self) -> None:
        deadline = None
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self._timeout_s
                if now >= deadline:
                    raise TransientStoreError("database is locked (another recorder holds the write turn)") \
                        from None
                time.sleep(self.POLL_S)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _session_rows(rows: BatchRows) -> tuple[list[list[Any]], list[tuple[str, str | None, str]]]:
    """The UPSERT rows (with the newest answer's parent_id) and the parent_id UPDATEs for sessions that
    have only answers in the batch (their request went in with an earlier one)."""
    parents = {session_id: parent_id for parent_id, _, session_id in rows.advanced}
    upserts = [[*row, parents.pop(row[0], None)] for row in rows.sessions]
    answered_only = [row for row in rows.advanced if row[2] in parents]
    return upserts, answered_only


class SQLiteSink:
    def __init__(self, path: Path, *, session_timeout_ms: int, synchronous: str = "NORMAL",
                 busy_timeout_ms: int = 5000, pricer: Pricer | None = None) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._builder = BatchBuilder(session_timeout_ms, pricer)
        self._chat_id_set: set[str] = set()  # sessions whose chat_id is known to be set
        self._connection = self._connect()
        self._turn = WriterTurn(path.with_name(path.name + "-writer.lock"), busy_timeout_ms)
        self._wal = path.with_name(path.name + "-wal")
        self._checkpointer = Checkpointer(path, synchronous)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        configure_sqlite_connection(connection, self._synchronous, self._busy_timeout_ms)
        # SQLite would checkpoint inside the commit that crosses 1000 WAL pages, delaying every
        # response waiting on that batch; the Checkpointer thread does it instead (see `maintain`).
        connection.execute("PRAGMA wal_autocheckpoint=0")
        # A batch dirties more pages than SQLite's default 2 MB page cache holds (bodies, and index
        # pages all over the session indexes): past it, pages are spilled to the WAL mid-transaction
        # and read back. 16 MB holds a full batch: the writer alone went 7,684 -> 8,295 exchanges/s.
        connection.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KB}")
        # Shrink the WAL when it starts over, so its size on disk tells how much is left to checkpoint.
        connection.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        return connection

    def reconnect(self) -> None:
        self.close()
        self._connection = self._connect()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._connection.close()

    def shutdown(self) -> None:
        self._checkpointer.stop()
        with contextlib.suppress(sqlite3.Error):
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.close()
        self._turn.close()

    def maintain(self, idle: bool) -> float | None:
        """Between batches: keep the WAL bounded."""
        self._checkpoint_if_needed()
        return None

    def _checkpoint_if_needed(self) -> None:
        """Ask for a checkpoint once the WAL holds WAL_CHECKPOINT_BYTES; should the checkpointer fall
        far behind, checkpoint here, blocking, so the WAL stays bounded."""
        try:
            size = self._wal.stat().st_size
        except FileNotFoundError:
            return
        if size < WAL_CHECKPOINT_BYTES:
            return
        if size < WAL_HARD_LIMIT_BYTES:
            self._checkpointer.request()
            return
        try:
            self._connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise TransientStoreError(str(exc)) from exc

    def write(self, records: list[Record]) -> None:
        connection = self._connection
        with self._turn:
            self._write(connection, records)

    def _write(self, connection: sqlite3.Connection, records: list[Record]) -> None:
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = self._builder.build(records, self)
                sessions, answered_only = _session_rows(rows)
                chat_ids = [row for row in rows.advanced if row[1] is not None and row[2] not in self._chat_id_set]
                connection.executemany(UPSERT_SESSION, sessions)
                connection.executemany(INSERT_SESSION_MODEL, rows.session_models)
                connection.executemany(INSERT_REQUEST, rows.requests)
                connection.executemany(INSERT_RESPONSE, rows.responses)
                connection.executemany(ADVANCE_SESSION, answered_only)
                connection.executemany(SET_CHAT_ID, chat_ids)
                connection.executemany(UPSERT_USAGE, rows.usage)
                connection.executemany(UPSERT_USAGE_DAILY, rows.usage_daily)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError):
            raise
        except sqlite3.DatabaseError as exc:  # locked, busy, read-only, disk full, I/O
            raise TransientStoreError(str(exc)) from exc
        self._builder.committed(rows)
        if len(self._chat_id_set) > KNOWN_CHAT_IDS:
            self._chat_id_set.clear()
        self._chat_id_set.update(row[2] for row in chat_ids)

    # -- Lookups, for the batch builder (inside the write transaction) ------------------------------

    def committed_ids(self, request_ids: list[str], response_ids: list[str]) -> tuple[set[str], set[str]]:
        found: tuple[set[str], set[str]] = (set(), set())
        for ids, table, column, into in ((request_ids, "requests", "request_id", found[0]),
                                         (response_ids, "responses", "response_id", found[1])):
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                into.update(row[0] for row in self._connection.execute(
                    f"SELECT {column} FROM {table} WHERE {column} IN ({', '.join('?' * len(chunk))})", chunk))
        return found

    def allocate_ids(self, table: str, count: int) -> list[int]:
        """The next AUTOINCREMENT ids: safe to hand out because we hold the write lock."""
        row = self._connection.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        start = (row[0] if row else 0) + 1
        return list(range(start, start + count))

    def latest_sessions(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        """The newest session of each key (idx_sessions_session_key)."""
        found: dict[str, tuple[str, int]] = {}
        for key in keys:
            row = self._connection.execute(
                "SELECT id, expires_at FROM sessions WHERE session_key = ? ORDER BY created_at DESC LIMIT 1",
                (key,)).fetchone()
            if row is not None:
                found[key] = (row[0], row[1])
        return found

    def parents(self, session_ids: list[str]) -> dict[str, str | None]:
        parents: dict[str, str | None] = {}
        for start in range(0, len(session_ids), 500):
            chunk = session_ids[start:start + 500]
            placeholders = ", ".join("?" * len(chunk))
            parents.update(self._connection.execute(
                f"SELECT id, parent_id FROM sessions WHERE id IN ({placeholders})", chunk).fetchall())
        return parents

    def find_requests(self, request_ids: list[str]) -> dict[str, OpenRequest]:
        found: dict[str, OpenRequest] = {}
        for request_id in request_ids:
            row = self._connection.execute(
                f"SELECT {', '.join(FIND_REQUEST_COLUMNS)} FROM requests WHERE request_id = ?",
                (request_id,)).fetchone()
            if row is not None:
                found[request_id] = open_request(row)
        return found
