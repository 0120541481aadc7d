"""Importing a legacy `request_logs` database (seed 002's migration 2) into the store.

Seconds become milliseconds; each legacy row becomes a request, its response and a synthetic session
(`migrated-session-<legacy id>`, or one per first user message with `group_sessions`). Chunks are read
in rowid order and written one transaction each, with the same bookkeeping the recorder does (parents,
cost, hourly rollups); request ids already in the store are skipped, so a second run imports nothing.
The legacy file is opened read-only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chatledger.ops.errors import NotFound, Refused
from chatledger.ops.legacy_rows import LegacyExchange, convert, map_columns, response_id_for
from chatledger.ops.revisions import upgrade
from chatledger.ops.sqlite import LEGACY_TABLE, companion, connect, tables, translated
from chatledger.pricing import Pricer
from chatledger.sessions import FIRST_MESSAGE_PREVIEW_CHARS, restarted_session_id, session_key
from chatledger.store.engine import configure_sqlite_connection
from chatledger.store.rollups import UPSERT_USAGE, UPSERT_USAGE_DAILY, Exchange, RollupBatch, daily
from chatledger.store.search_index import SQLiteSearchIndex
from chatledger.store.sqlite_sink import ADVANCE_SESSION, INSERT_SESSION_MODEL

UPSERT_SESSION = """
INSERT INTO sessions (id, session_key, first_user_message, message_count, created_at, updated_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET message_count = sessions.message_count + excluded.message_count,
                              created_at = MIN(sessions.created_at, excluded.created_at),
                              updated_at = MAX(sessions.updated_at, excluded.updated_at),
                              expires_at = MAX(sessions.expires_at, excluded.expires_at)
"""
INSERT_REQUEST = """
INSERT INTO requests (id, session_id, request_id, timestamp, method, path, openai_request, provider_request,
                      model, provider, upstream_model, stream, api_key_hash, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL, ?)
"""
INSERT_RESPONSE = """
INSERT INTO responses (request_id, session_id, response_id, timestamp, provider_response, openai_response,
                       parent_id, upstream_id, completion_tokens, prompt_tokens, total_tokens, finish_reason,
                       error, status_code, duration_ms, cost, model, provider, api_key_hash, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
"""
CHUNK_ROWS = 1000
Batch = list[tuple[LegacyExchange, str, str]]  # a row, its session id and session key


@dataclass
class ImportResult:
    read: int = 0
    imported: int = 0
    skipped: int = 0  # already in the store
    renamed: int = 0  # legacy rows repeating an earlier row's request id
    unparsed: int = 0  # request bodies that are not JSON, imported as stored
    unmapped_columns: list[str] = field(default_factory=list)
    indexed: bool = False  # the imported rows went into the search index


class SessionAssigner:
    """Which session a legacy row goes to; the same answer on every run over the same file."""

    def __init__(self, group: bool, timeout_ms: int) -> None:
        self.group = group
        self.timeout_ms = timeout_ms
        self.last_seen: dict[str, tuple[str, int]] = {}

    def __call__(self, item: LegacyExchange) -> tuple[str, str]:
        key = session_key(item.first_text, None)
        if not self.group:
            return f"migrated-session-{item.legacy_id}", key
        known = self.last_seen.get(key)
        if known is None:
            session_id, last = key, item.timestamp
        elif item.timestamp - known[1] > self.timeout_ms:
            session_id, last = restarted_session_id(key, item.timestamp), item.timestamp
        else:
            session_id, last = known[0], max(known[1], item.timestamp)
        self.last_seen[key] = (session_id, last)
        return session_id, key


def _open_legacy(legacy: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """Read-only; with no `-wal` beside it (nothing to replay), immutable too, so no file at all is created."""
    source = connect(legacy, busy_timeout_ms=busy_timeout_ms, readonly=True,
                     immutable=not companion(legacy, "-wal").exists())
    with translated(legacy):
        present = tables(source)
    if LEGACY_TABLE not in present:
        source.close()
        raise NotFound(f"{legacy} has no {LEGACY_TABLE} table: not a legacy database")
    return source


def count_legacy_rows(legacy: Path, *, busy_timeout_ms: int = 5000) -> int:
    source = _open_legacy(legacy, busy_timeout_ms)
    try:
        with translated(legacy):
            return source.execute(f"SELECT COUNT(*) FROM {LEGACY_TABLE}").fetchone()[0]
    finally:
        source.close()


def import_legacy(legacy: Path, database: Path, *, session_timeout_ms: int, group_sessions: bool = False,
                  pricer: Pricer | None = None, chunk_rows: int = CHUNK_ROWS, busy_timeout_ms: int = 5000,
                  on_progress: Callable[[int], None] | None = None) -> ImportResult:
    if database.exists() and legacy.resolve() == database.resolve():
        raise Refused("the legacy database and the store must be two different files")
    source = _open_legacy(legacy, busy_timeout_ms)
    try:
        with translated(legacy):
            columns = [row[1] for row in source.execute(f"PRAGMA table_info({LEGACY_TABLE})")]
        upgrade(database, session_timeout_ms=session_timeout_ms, busy_timeout_ms=busy_timeout_ms)
        target = sqlite3.connect(database, isolation_level=None)
        try:
            configure_sqlite_connection(target, busy_timeout_ms=busy_timeout_ms)
            importer = Importer(target, database, SessionAssigner(group_sessions, session_timeout_ms),
                                session_timeout_ms, pricer)
            result = importer.copy(source, legacy, columns, chunk_rows, on_progress)
        finally:
            target.close()
    finally:
        source.close()
    if result.imported:
        result.indexed = index_new_rows(database)
    return result


def index_new_rows(database: Path) -> bool:
    """Put the imported rows into the search index now, as a gateway's indexer would (several
    indexers take turns on the index file). False if the index could not be written just now."""
    with translated(database):
        try:
            index = SQLiteSearchIndex(database, busy_timeout_ms=2000)
        except sqlite3.OperationalError:
            return False
        try:
            index.catch_up()
        except sqlite3.OperationalError:
            return False
        finally:
            index.close()
    return True


class Importer:
    def __init__(self, target: sqlite3.Connection, database: Path, assign: SessionAssigner, timeout_ms: int,
                 pricer: Pricer | None) -> None:
        self.target = target
        self.database = database
        self.assign = assign
        self.timeout_ms = timeout_ms
        self.pricer = pricer
        self.seen: set[str] = set()

    def copy(self, source: sqlite3.Connection, legacy: Path, columns: list[str], chunk_rows: int,
             on_progress: Callable[[int], None] | None) -> ImportResult:
        mapping = map_columns(columns)
        result = ImportResult(unmapped_columns=[name for name in columns if name not in mapping.values()])
        fields = list(mapping)
        select = ", ".join(f'"{mapping[name]}"' for name in fields)
        query = f"SELECT rowid, {select} FROM {LEGACY_TABLE} WHERE rowid > ? ORDER BY rowid LIMIT ?"
        last_rowid = 0
        while True:
            with translated(legacy):
                rows = source.execute(query, (last_rowid, chunk_rows)).fetchall()
            if not rows:
                return result
            last_rowid = rows[-1][0]
            batch = [self.prepare(convert(dict(zip(fields, row[1:], strict=True)), row[0]), result) for row in rows]
            with translated(self.database):
                imported = self.write(batch)
            result.read += len(rows)
            result.imported += imported
            result.skipped += len(rows) - imported
            if on_progress is not None:
                on_progress(len(rows))

    def prepare(self, item: LegacyExchange, result: ImportResult) -> tuple[LegacyExchange, str, str]:
        if item.request_id in self.seen:
            item.request_id = f"{item.request_id}-legacy-{item.legacy_id}"
            result.renamed += 1
        self.seen.add(item.request_id)
        result.unparsed += not item.request_parsed
        return (item, *self.assign(item))

    def write(self, batch: Batch) -> int:
        """One transaction: the rows of `batch` whose request id is not in the store yet."""
        connection = self.target
        connection.execute("BEGIN IMMEDIATE")
        try:
            ids = [item.request_id for item, _, _ in batch]
            present = {row[0] for row in connection.execute(
                f"SELECT request_id FROM requests WHERE request_id IN ({', '.join('?' * len(ids))})", ids)}
            fresh = [entry for entry in batch if entry[0].request_id not in present]
            if fresh:
                _insert(connection, fresh, self.timeout_ms, self.pricer)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return len(fresh)


def _insert(connection: sqlite3.Connection, fresh: Batch, timeout_ms: int,
            pricer: Pricer | None) -> None:
    """The sink's bookkeeping, for imported rows: sessions, requests, responses with their parents and
    cost, the sessions' newest answers and models, and the hourly and daily usage rollups."""
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'requests'").fetchone()
    next_id = (row[0] if row else 0) + 1
    sessions: dict[str, list] = {}
    requests = []
    for item, session_id, key in fresh:
        entry = sessions.get(session_id)
        if entry is None:
            sessions[session_id] = [session_id, key, item.first_text[:FIRST_MESSAGE_PREVIEW_CHARS], 1,
                                    item.timestamp, item.timestamp, item.timestamp + timeout_ms]
        else:
            entry[3] += 1
            entry[4], entry[5] = min(entry[4], item.timestamp), max(entry[5], item.timestamp)
            entry[6] = entry[5] + timeout_ms
        requests.append((next_id, session_id, item.request_id, item.timestamp, item.method, item.path,
                         item.openai_request, item.provider_request, item.model, item.provider, item.stream,
                         item.created_at))
        next_id += 1
    connection.executemany(UPSERT_SESSION, list(sessions.values()))
    connection.executemany(INSERT_REQUEST, requests)
    connection.executemany(INSERT_SESSION_MODEL, sorted({(item_session, item.model, item.provider or "")
                                                         for item, item_session, _ in fresh}))
    placeholders = ", ".join("?" * len(sessions))
    parents = dict(connection.execute(f"SELECT id, parent_id FROM sessions WHERE id IN ({placeholders})",
                                      list(sessions)).fetchall())
    advanced: dict[str, tuple[str, str | None]] = {}
    responses = []
    rollups = RollupBatch()
    for (item, session_id, _), (row_id, *_) in zip(fresh, requests, strict=True):
        response_id = response_id_for(item.request_id)
        parent_id = parents.get(session_id)
        if item.error is None:
            parents[session_id] = response_id
            advanced[session_id] = (response_id, item.upstream_id)
        cost = pricer.cost(item.provider or "", item.model, "", item.prompt_tokens, item.completion_tokens) \
            if pricer is not None else None
        responses.append((row_id, session_id, response_id, item.timestamp, item.provider_response,
                          item.openai_response, parent_id, item.upstream_id, item.completion_tokens, item.prompt_tokens,
                          item.total_tokens, item.finish_reason, item.error, item.status_code, item.duration_ms, cost,
                          item.model, item.provider, item.created_at))
        rollups.add(Exchange(item.timestamp, item.model, item.provider or "", None, item.error is not None,
                             item.stream, item.prompt_tokens, item.completion_tokens, item.total_tokens, cost,
                             item.duration_ms))
    connection.executemany(INSERT_RESPONSE, responses)
    connection.executemany(ADVANCE_SESSION, [(response_id, upstream_id, session_id)
                                             for session_id, (response_id, upstream_id) in advanced.items()])
    hourly = rollups.rows()
    connection.executemany(UPSERT_USAGE, hourly)
    connection.executemany(UPSERT_USAGE_DAILY, daily(hourly))
