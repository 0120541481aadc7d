"""The SQLite side of the recorder: one connection, one `BEGIN IMMEDIATE` transaction per batch.

Row ids are allocated here, inside the write lock, so a batch goes in with `executemany` and no
per-row round trip. Session bookkeeping is folded per batch: one UPSERT per session for its new
requests (message_count adds up, so it stays right with several processes) and one UPDATE per
session for its newest answer (parent_id), instead of a row write per exchange.
Each response also gets its cost, its search-index entry and its share of the hourly rollups, in
the same transaction.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from chatledger.pricing import Pricer
from chatledger.sessions import FIRST_MESSAGE_PREVIEW_CHARS, first_user_text, restarted_session_id, session_key
from chatledger.store.checkpointer import Checkpointer
from chatledger.store.engine import configure_sqlite_connection
from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.rollups import UPSERT_USAGE, Exchange, RollupBatch
from chatledger.store.rows import prompt_text, response_fields, text
from chatledger.store.search_indexer import SearchIndexer
from chatledger.store.writer import TransientStoreError

UPSERT_SESSION = """
INSERT INTO sessions (id, session_key, first_user_message, api_key_hash, message_count,
                      created_at, updated_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET message_count = sessions.message_count + excluded.message_count,
                              updated_at = MAX(sessions.updated_at, excluded.updated_at),
                              expires_at = MAX(sessions.expires_at, excluded.expires_at)
"""

ADVANCE_SESSION = "UPDATE sessions SET parent_id = ?, chat_id = COALESCE(chat_id, ?) WHERE id = ?"

INSERT_REQUEST = """
INSERT INTO requests (id, session_id, request_id, timestamp, method, path, openai_request,
                      provider_request, model, provider, upstream_model, stream, api_key_hash, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

INSERT_RESPONSE = """
INSERT INTO responses (id, request_id, session_id, response_id, timestamp, provider_response, openai_response,
                       parent_id, upstream_id, completion_tokens, prompt_tokens, total_tokens, finish_reason,
                       error, status_code, duration_ms, ttft_ms, cost, model, provider, api_key_hash, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


SESSION_CACHE_SIZE = 100_000
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
WAL_HARD_LIMIT_BYTES = 256 * 1024 * 1024


class UnknownRequest(ValueError):
    pass


@dataclass(slots=True, frozen=True)
class OpenRequest:
    """A request row whose response is still to come: what that response's row will need."""

    row_id: int
    session_id: str
    model: str
    provider: str
    upstream_model: str
    api_key_hash: str | None
    stream: bool
    prompt: str  # this turn's text, for the search index


class SQLiteSink:
    def __init__(self, path: Path, *, session_timeout_ms: int, synchronous: str = "NORMAL",
                 busy_timeout_ms: int = 5000, pricer: Pricer | None = None) -> None:
        self._path = path
        self._pricer = pricer
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        # session key -> (session id, expires_at); trusted only to say "still active".
        self._sessions: collections.OrderedDict[str, tuple[str, int]] = collections.OrderedDict()
        # request uuid -> what its response row needs, for requests whose response is not written yet.
        self._open: dict[str, OpenRequest] = {}
        self._connection = self._connect()
        self._wal = path.with_name(path.name + "-wal")
        self._checkpointer = Checkpointer(path, synchronous)
        self._search = SearchIndexer(self._connection)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        configure_sqlite_connection(connection, self._synchronous, self._busy_timeout_ms)
        # SQLite would checkpoint inside the commit that crosses 1000 WAL pages, delaying every
        # response waiting on that batch; the Checkpointer thread does it instead (see `maintain`).
        connection.execute("PRAGMA wal_autocheckpoint=0")
        # Shrink the WAL when it starts over, so its size on disk tells how much is left to checkpoint.
        connection.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES // 4}")
        return connection

    def reconnect(self) -> None:
        self.close()
        self._connection = self._connect()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._connection.close()

    def shutdown(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            while self._search.due(idle=True):
                self._search.run(self._connection)
        self._checkpointer.stop()
        with contextlib.suppress(sqlite3.Error):
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.close()

    def maintain(self, idle: bool) -> None:
        """Between batches: feed the search index, then keep the WAL bounded."""
        try:
            if self._search.due(idle):
                self._search.run(self._connection)
        except sqlite3.DatabaseError as exc:
            raise TransientStoreError(str(exc)) from exc
        self._checkpoint_if_needed()

    def _checkpoint_if_needed(self) -> None:
        """Ask for a checkpoint once the WAL holds WAL_CHECKPOINT_BYTES (SQLite's own default point);
        should the checkpointer fall far behind, checkpoint here, blocking, so the WAL stays bounded."""
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
        sessions: dict[str, tuple[str, int]] = {}
        opened: dict[str, OpenRequest] = {}
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._write_requests([r for r in records if isinstance(r, RequestRecord)], sessions, opened)
                closed, search_rows = self._write_responses(
                    [r for r in records if isinstance(r, ResponseRecord)], opened)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError):
            raise
        except sqlite3.DatabaseError as exc:  # locked, busy, read-only, disk full, I/O
            raise TransientStoreError(str(exc)) from exc
        self._search.add(search_rows)
        self._remember_sessions(sessions)
        self._open.update(opened)
        for request_id in closed:
            self._open.pop(request_id, None)

    def _write_requests(self, records: list[RequestRecord], sessions: dict[str, tuple[str, int]],
                        opened: dict[str, OpenRequest]) -> None:
        if not records:
            return
        next_id = self._next_id("requests")
        now = int(time.time() * 1000)
        session_rows: dict[str, list] = {}
        request_rows = []
        for record in records:
            first_text = first_user_text(record.body, record.endpoint)
            session_id, key = self._resolve_session(record, first_text, sessions)
            expires = record.timestamp + self._session_timeout_ms
            row = session_rows.get(session_id)
            if row is None:
                session_rows[session_id] = [session_id, key, first_text[:FIRST_MESSAGE_PREVIEW_CHARS],
                                            record.api_key_hash, 1, record.timestamp, record.timestamp, expires]
            else:
                row[4] += 1
                row[6] = max(row[6], record.timestamp)
                row[7] = max(row[7], expires)
            request_rows.append((next_id, session_id, record.request_id, record.timestamp, record.method,
                                 record.path, text(record.openai_request), text(record.provider_request),
                                 record.model, record.provider, record.upstream_model, record.stream,
                                 record.api_key_hash, now))
            opened[record.request_id] = OpenRequest(next_id, session_id, record.model, record.provider,
                                                    record.upstream_model, record.api_key_hash, record.stream,
                                                    prompt_text(record.body, record.endpoint))
            next_id += 1
        self._connection.executemany(UPSERT_SESSION, list(session_rows.values()))
        self._connection.executemany(INSERT_REQUEST, request_rows)

    def _resolve_session(self, record: RequestRecord, first_text: str,
                         sessions: dict[str, tuple[str, int]]) -> tuple[str, str]:
        if record.session_hint:
            return record.session_hint, record.session_hint
        key = session_key(first_text, record.api_key_hash)
        known = sessions.get(key) or self._sessions.get(key)
        if known is not None and known[1] >= record.timestamp:
            session_id = known[0]
        else:
            latest = self._connection.execute(
                "SELECT id, expires_at FROM sessions WHERE session_key = ? ORDER BY created_at DESC LIMIT 1",
                (key,)).fetchone()
            if latest is None:
                session_id = key
            elif latest[1] >= record.timestamp:
                session_id = latest[0]
            else:
                session_id = restarted_session_id(key, record.timestamp)
        sessions[key] = (session_id, record.timestamp + self._session_timeout_ms)
        return session_id, key

    def _remember_sessions(self, sessions: dict[str, tuple[str, int]]) -> None:
        cache = self._sessions
        for key, value in sessions.items():
            cache[key] = value
            cache.move_to_end(key)
        while len(cache) > SESSION_CACHE_SIZE:
            cache.popitem(last=False)

    def _write_responses(self, records: list[ResponseRecord], opened: dict[str, OpenRequest]
                         ) -> tuple[list[str], list[tuple[int, str, str]]]:
        if not records:
            return [], []
        now = int(time.time() * 1000)
        next_id = self._next_id("responses")
        rows = []
        search_rows = []
        rollups = RollupBatch()
        links = [opened.get(r.request_id) or self._open.get(r.request_id) or self._find_request(r.request_id)
                 for r in records]
        # Each answer's parent is the session's previous answer: from this batch, else from the table.
        parents = self._parents({link.session_id for link in links if link is not None})
        advanced: dict[str, tuple[str, str | None]] = {}
        for record, link in zip(records, links, strict=True):
            if link is None:
                raise UnknownRequest(f"response {record.response_id} for unknown request {record.request_id}")
            fields = response_fields(record)
            parent_id = parents.get(link.session_id)
            if fields.error is None:
                parents[link.session_id] = record.response_id
                advanced[link.session_id] = (record.response_id, fields.upstream_id)
            cost = self._pricer.cost(link.provider, link.model, link.upstream_model, fields.prompt_tokens,
                                     fields.completion_tokens, fields.cached_tokens) if self._pricer else None
            rows.append((next_id, link.row_id, link.session_id, record.response_id, record.timestamp,
                         fields.provider_response, fields.openai_response, parent_id, fields.upstream_id,
                         fields.completion_tokens, fields.prompt_tokens, fields.total_tokens, fields.finish_reason,
                         fields.error, record.status_code, record.duration_ms, record.ttft_ms, cost, link.model,
                         link.provider, link.api_key_hash, now))
            if link.prompt or fields.text:
                search_rows.append((next_id, link.prompt, fields.text))
            rollups.add(Exchange(record.timestamp, link.model, link.provider, link.api_key_hash,
                                 fields.error is not None, link.stream, fields.prompt_tokens,
                                 fields.completion_tokens, fields.total_tokens, cost, record.duration_ms,
                                 record.ttft_ms))
            next_id += 1
        self._connection.executemany(INSERT_RESPONSE, rows)
        self._connection.executemany(ADVANCE_SESSION, [(response_id, upstream_id, session_id)
                                                       for session_id, (response_id, upstream_id) in advanced.items()])
        self._connection.executemany(UPSERT_USAGE, rollups.rows())
        return [record.request_id for record in records], search_rows

    def _parents(self, session_ids: set[str]) -> dict[str, str | None]:
        parents: dict[str, str | None] = {}
        ids = list(session_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            placeholders = ", ".join("?" * len(chunk))
            parents.update(self._connection.execute(
                f"SELECT id, parent_id FROM sessions WHERE id IN ({placeholders})", chunk).fetchall())
        return parents

    def _next_id(self, table: str) -> int:
        """The next AUTOINCREMENT id: safe to hand out because we hold the write lock."""
        row = self._connection.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return (row[0] if row else 0) + 1

    def _find_request(self, request_id: str) -> OpenRequest | None:
        row = self._connection.execute(
            "SELECT id, session_id, model, provider, upstream_model, api_key_hash, stream, path, openai_request "
            "FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        try:
            body = orjson.loads(row[8])
        except orjson.JSONDecodeError:
            body = {}
        endpoint = "chat" if row[7].endswith("chat/completions") else row[7].rsplit("/", 1)[-1]
        prompt = prompt_text(body, endpoint) if isinstance(body, dict) else ""
        return OpenRequest(row[0], row[1], row[2], row[3] or "", row[4] or "", row[5], bool(row[6]), prompt)
