"""One connection of the PostgreSQL recorder: one transaction per part of a batch (postgres_sink.py
splits each batch by conversation across a few of these, written at the same time).

Several replicas write to one database, so nothing here trusts a figure read before the write:
ids come from the sequences in bulk, session counts and rollups only ever add up (UPSERTs), and
the sessions a batch touches are locked in id order before they are read or written (rollup rows
are written in key order after them), so two writers never wait on each other in a cycle.
Requests and responses go in with binary COPY, the sessions with one UPSERT; the rest of the batch
(search queue, rollups, the next batch's ids) rides in the COMMIT's round trip. Search rows are not
the recorder's: the batch only queues its response ids in `search_pending`, and a background indexer
(search_pg.py, on any replica) turns them into tsvectors later, so the recorder never waits for text
search parsing or the GIN index.

A lost connection is a TransientStoreError (the writer keeps the batch and retries). A connection
lost while COMMIT was in flight leaves the batch's fate unknown: the retry first looks for it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg

from chatledger.pricing import Pricer
from chatledger.store import pg_arrays
from chatledger.store.batch import (
    FIND_REQUEST_COLUMNS,
    REQUEST_COLUMNS,
    RESPONSE_COLUMNS,
    SESSION_COLUMNS,
    BatchBuilder,
    BatchRows,
    KnownCommitted,
    OpenRequest,
    open_request,
)
from chatledger.store.pg_arrays import int4_array, int8_array, text_array
from chatledger.store.records import Record, RequestRecord
from chatledger.store.rollups import UPSERT_USAGE, UPSERT_USAGE_DAILY
from chatledger.store.writer import TransientStoreError

log = logging.getLogger("chatledger.writer")

# One statement, one row version per session and batch: its new requests (message_count adds up) and
# its newest answer (parent_id) together. A session with only an answer in the batch comes as a row
# that changes nothing but those two (it exists: its request was committed before). The columns go
# as binary arrays (pg_arrays.py), each with its encoder here.
SESSION_ARRAYS = (text_array, text_array, text_array, text_array, int4_array, int8_array, int8_array, int8_array,
                  text_array, text_array)
UPSERT_SESSIONS = f"""
INSERT INTO sessions ({", ".join(SESSION_COLUMNS)}, parent_id, chat_id)
SELECT * FROM unnest({", ".join(["%s"] * len(SESSION_ARRAYS))})
ON CONFLICT (id) DO UPDATE SET message_count = sessions.message_count + excluded.message_count,
                               updated_at = GREATEST(sessions.updated_at, excluded.updated_at),
                               expires_at = GREATEST(sessions.expires_at, excluded.expires_at),
                               parent_id = COALESCE(excluded.parent_id, sessions.parent_id),
                               chat_id = COALESCE(sessions.chat_id, excluded.chat_id)
"""
LOCK_SESSIONS = "SELECT id, parent_id FROM sessions WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
LATEST_SESSIONS = """
SELECT DISTINCT ON (session_key) session_key, id, expires_at FROM sessions
WHERE session_key = ANY(%s) ORDER BY session_key, created_at DESC
"""
UPSERT_USAGE_PG = UPSERT_USAGE.replace("?", "%s")
UPSERT_USAGE_DAILY_PG = UPSERT_USAGE_DAILY.replace("?", "%s")
# Binary COPY: the server parses no text (the JSON bodies are most of a row) and psycopg's C code
# writes the rows. The column types are read from the catalog at connect, so they follow the schema.
COPY_COLUMNS = {"requests": REQUEST_COLUMNS, "responses": RESPONSE_COLUMNS}
COPY = {table: f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        for table, columns in COPY_COLUMNS.items()}
COLUMN_TYPES = """
SELECT c.relname, a.attname, a.atttypid::int FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE a.attrelid IN ('requests'::regclass, 'responses'::regclass) AND a.attnum > 0 AND NOT a.attisdropped
"""
# Ids from both sequences in one statement. Each batch takes, in its COMMIT's round trip, as many
# as it used, for the next one (which takes what more it needs before it is built): no round trip of
# its own in a steady stream. Ids a replica took but never used are gaps, as a rollback leaves.
ALLOCATE_IDS = """
SELECT ARRAY(SELECT nextval('requests_id_seq') FROM generate_series(1, %s)),
       ARRAY(SELECT nextval('responses_id_seq') FROM generate_series(1, %s))
"""
QUEUE_SEARCH = "INSERT INTO search_pending (id) SELECT unnest(%s)"
INSERT_SESSION_MODELS = ("INSERT INTO session_models (session_id, model, provider) SELECT * FROM unnest(%s, %s, %s) "
                         "ON CONFLICT DO NOTHING")
# Fail over in seconds, not minutes, when the server or the network goes away.
CONNECT_OPTIONS: dict[str, Any] = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5,
                                   "keepalives_interval": 2, "keepalives_count": 3, "tcp_user_timeout": 15000,
                                   "application_name": "chatledger-writer"}


def _without_nul(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """PostgreSQL's text cannot hold NUL; SQLite's can. Replace it rather than refuse the exchange."""
    return [tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v for v in row)
            if any(isinstance(v, str) and "\x00" in v for v in row) else row for row in rows]


def _session_rows(rows: BatchRows) -> list[tuple[Any, ...]]:
    """The batch's session UPSERT rows and parent_id UPDATEs as one list of rows, in session id order."""
    merged: dict[str, tuple[Any, ...]] = {row[0]: (*row, None, None) for row in rows.sessions}
    for parent_id, chat_id, session_id in rows.advanced:
        row = merged.get(session_id)
        merged[session_id] = (*row[:8], parent_id, chat_id) if row is not None else \
            (session_id, session_id, None, None, 0, 0, 0, 0, parent_id, chat_id)
    return [merged[session_id] for session_id in sorted(merged)]


def _is_nul_error(exc: psycopg.DataError) -> bool:
    """psycopg refuses a NUL in a text parameter; the server, in a binary array or COPY field."""
    return "NUL" in str(exc) or "0x00" in str(exc)


class PgShard:
    def __init__(self, conninfo: str, *, session_timeout_ms: int, pricer: Pricer | None = None) -> None:
        self._conninfo = conninfo
        self._builder = BatchBuilder(session_timeout_ms, pricer)
        self._connection: psycopg.Connection | None = None
        # A batch whose COMMIT got no answer: (its rows, one request or response uuid it holds).
        self._unsure: tuple[BatchRows, str, str] | None = None
        # Such a batch's records, once found committed.
        self._known = KnownCommitted()
        self._copy_types: dict[str, list[int]] = {}
        # Row ids this replica has taken from the sequences and not used yet.
        self._ids: dict[str, list[int]] = {"requests": [], "responses": []}
        self._connect()

    def _connect(self) -> psycopg.Connection:
        connection = psycopg.connect(self._conninfo, autocommit=False, **CONNECT_OPTIONS)
        pg_arrays.register(connection.adapters)
        try:
            types = {(table, column): oid for table, column, oid in connection.execute(COLUMN_TYPES).fetchall()}
            connection.rollback()
        except BaseException:
            connection.close()
            raise
        self._copy_types = {table: [types[table, column] for column in columns]
                            for table, columns in COPY_COLUMNS.items()}
        self._connection = connection
        return connection

    def reconnect(self) -> None:
        self.close()
        try:
            self._connect()
        except psycopg.OperationalError as exc:
            raise TransientStoreError(str(exc)) from exc

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None

    def write(self, records: list[Record]) -> None:
        offered = records
        records = self._known.left_out(records)
        try:
            connection = self._connection if self._connection is not None and not self._connection.closed \
                else self._connect()
            if self._unsure is not None:
                records = self._settle(connection, records)
            if not records:
                self._known.written(offered)
                return
            try:
                rows = self._build(connection, records)
                self._write_rows(connection, rows, records, clean=False)
            except psycopg.DataError as exc:
                if not _is_nul_error(exc):
                    raise
                self._unsure = None  # refused before its COMMIT: nothing of it is in
                connection.rollback()  # rare: take the slow path, which replaces NUL characters
                rows = self._build(connection, records)
                self._write_rows(connection, rows, records, clean=True)
            self._unsure = None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise TransientStoreError(str(exc)) from exc
        except BaseException:
            self._unsure = None
            with contextlib.suppress(psycopg.Error):
                if self._connection is not None:
                    self._connection.rollback()
            raise
        self._builder.committed(rows)
        self._known.written(offered)

    def _build(self, connection: psycopg.Connection, records: list[Record]) -> BatchRows:
        requests = sum(isinstance(record, RequestRecord) for record in records)
        short = (max(0, requests - len(self._ids["requests"])),
                 max(0, len(records) - requests - len(self._ids["responses"])))
        if any(short):
            self._take_ids(connection.execute(ALLOCATE_IDS, short))
        return self._builder.build(records, self)

    def _take_ids(self, cursor: psycopg.Cursor) -> None:
        row = cursor.fetchone()
        assert row is not None
        self._ids["requests"].extend(row[0])
        self._ids["responses"].extend(row[1])

    def _write_rows(self, connection: psycopg.Connection, rows: BatchRows, records: list[Record], *,
                    clean: bool) -> None:
        """Everything but the lookups: three statements, then the rest with the COMMIT in one round trip."""
        def _clean(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            return _without_nul(rows) if clean else rows

        with connection.cursor() as cursor:
            sessions = _session_rows(rows)
            if sessions:
                cursor.execute(UPSERT_SESSIONS, [encode(column) for encode, column
                                                 in zip(SESSION_ARRAYS, zip(*_clean(sessions), strict=True),
                                                        strict=True)])
            for table, table_rows in (("requests", rows.requests), ("responses", rows.responses)):
                if table_rows:
                    with cursor.copy(COPY[table]) as copy:
                        copy.set_types(self._copy_types[table])
                        for row in _clean(table_rows):
                            copy.write_row(row)
            # From here on a lost connection leaves the batch's fate unknown: the retry looks first.
            self._unsure = (rows, *self._marker(records))
            with connection.cursor() as ids:
                with connection.pipeline():
                    if rows.responses:
                        # In the batch's transaction: a committed response is always indexed or queued.
                        cursor.execute(QUEUE_SEARCH, (int8_array(row[0] for row in rows.responses),))
                    for usage in _clean(rows.usage):
                        cursor.execute(UPSERT_USAGE_PG, usage)
                    for usage in _clean(rows.usage_daily):
                        cursor.execute(UPSERT_USAGE_DAILY_PG, usage)
                    if rows.session_models:
                        cursor.execute(INSERT_SESSION_MODELS, [text_array(column) for column in
                                                               zip(*_clean(rows.session_models), strict=True)])
                    ids.execute(ALLOCATE_IDS, (max(0, len(rows.requests) - len(self._ids["requests"])),
                                               max(0, len(rows.responses) - len(self._ids["responses"]))))
                    connection.commit()
                self._take_ids(ids)

    @staticmethod
    def _marker(records: list[Record]) -> tuple[str, str]:
        """A row by which to tell afterwards whether the batch committed: (table, uuid)."""
        first = records[0]
        if isinstance(first, RequestRecord):
            return "requests", first.request_id
        return "responses", first.response_id

    def _settle(self, connection: psycopg.Connection, records: list[Record]) -> list[Record]:
        """After a COMMIT without an answer: if that batch is in, take its records out of this one."""
        assert self._unsure is not None
        rows, table, uuid = self._unsure
        column = "request_id" if table == "requests" else "response_id"
        found = connection.execute(f"SELECT 1 FROM {table} WHERE {column} = %s", (uuid,)).fetchone()
        connection.rollback()
        self._unsure = None
        if found is None:
            return records
        log.warning("the batch whose commit was cut off had committed; not writing it again")
        self._builder.committed(rows)
        # Left out of this write and of every retry of it, should this one fail too.
        self._known.add([row[2] for row in rows.requests] + [row[3] for row in rows.responses])
        return self._known.left_out(records)

    # -- Lookups, for the batch builder (inside the write transaction) ------------------------------

    def _cursor(self) -> psycopg.Cursor:
        assert self._connection is not None
        return self._connection.cursor()

    def committed_ids(self, request_ids: list[str], response_ids: list[str]) -> tuple[set[str], set[str]]:
        with self._cursor() as cursor:
            cursor.execute("SELECT request_id FROM requests WHERE request_id = ANY(%s)", (text_array(request_ids),))
            requests = {row[0] for row in cursor.fetchall()}
            cursor.execute("SELECT response_id FROM responses WHERE response_id = ANY(%s)",
                           (text_array(response_ids),))
            return requests, {row[0] for row in cursor.fetchall()}

    def allocate_ids(self, table: str, count: int) -> list[int]:
        """Ids from the table's sequence (never max()+1, since replicas write too), taken before the
        batch was built (`_build`)."""
        ids = self._ids[table]
        if len(ids) < count:  # more rows than the batch has records: not from BatchBuilder
            with self._cursor() as cursor:
                cursor.execute(f"SELECT nextval('{table}_id_seq') FROM generate_series(1, %s)", (count - len(ids),))
                ids.extend(row[0] for row in cursor.fetchall())
        self._ids[table] = ids[count:]
        return ids[:count]

    def latest_sessions(self, keys: list[str]) -> dict[str, tuple[str, int]]:
        with self._cursor() as cursor:
            cursor.execute(LATEST_SESSIONS, (text_array(keys),))
            return {key: (session_id, expires) for key, session_id, expires in cursor.fetchall()}

    def parents(self, session_ids: list[str]) -> dict[str, str | None]:
        """Lock the batch's sessions (id order) and read their last answers, current as of the lock."""
        with self._cursor() as cursor:
            cursor.execute(LOCK_SESSIONS, (text_array(session_ids),))
            return dict(cursor.fetchall())

    def find_requests(self, request_ids: list[str]) -> dict[str, OpenRequest]:
        with self._cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(FIND_REQUEST_COLUMNS)} FROM requests WHERE request_id = ANY(%s)",
                           (text_array(request_ids),))
            return {row[7]: open_request(row) for row in cursor.fetchall()}
