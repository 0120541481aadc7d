"""What a batch of records becomes, whatever the database: the rows to write and the session bookkeeping.

A sink asks `BatchBuilder.build` for a batch's rows inside its transaction (the builder reads what it
needs through the sink's `Lookups`: ids, sessions, previous answers), writes them its own way, and,
once the transaction has committed, calls `committed` so the builder's caches learn what is now
true. Sessions are folded per batch: one row per session for its new requests (message_count adds
up, so it stays right with several writers) and its newest answer (parent_id); a session's first
request to a model adds a row to session_models. Each response also gets its cost and its share of
the hourly and daily rollups. Search text is not the recorder's business: the
search indexers read it from the committed rows.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatledger.pricing import Pricer
from chatledger.sessions import FIRST_MESSAGE_PREVIEW_CHARS, restarted_session_id, session_key
from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.rollups import Exchange, RollupBatch, daily
from chatledger.store.rows import response_fields, text

SESSION_COLUMNS = ("id", "session_key", "first_user_message", "api_key_hash", "message_count", "created_at",
                   "updated_at", "expires_at")
REQUEST_COLUMNS = ("id", "session_id", "request_id", "timestamp", "method", "path", "openai_request",
                   "provider_request", "model", "provider", "upstream_model", "stream", "api_key_hash", "created_at")
RESPONSE_COLUMNS = ("id", "request_id", "session_id", "response_id", "timestamp", "provider_response",
                    "openai_response", "parent_id", "upstream_id", "completion_tokens", "prompt_tokens",
                    "total_tokens", "finish_reason", "error", "status_code", "duration_ms", "ttft_ms", "cost",
                    "model", "provider", "api_key_hash", "created_at")
# The columns `Lookups.find_requests` selects, in this order, for `open_request`.
FIND_REQUEST_COLUMNS = ("id", "session_id", "model", "provider", "upstream_model", "api_key_hash", "stream",
                        "request_id")

SESSION_CACHE_SIZE = 100_000
KEY_CACHE_CHARS = 16 * 1024 * 1024  # the opening texts the session-key cache may hold (an agent's can be long)
KNOWN_SESSION_MODELS = 200_000


class UnknownRequest(ValueError):
    pass


def record_uuid(record: Record) -> str:
    return record.request_id if isinstance(record, RequestRecord) else record.response_id


class KnownCommitted:
    """Records a sink knows are committed though the writer will offer them again (the write that
    held them failed after they went in): left out each time they come back, and forgotten once a
    write that held them succeeds (the writer offers a failed batch again until it does, whole or
    record by record)."""

    def __init__(self) -> None:
        self._uuids: set[str] = set()

    def add(self, uuids: Iterable[str]) -> None:
        self._uuids.update(uuids)

    def left_out(self, records: list[Record]) -> list[Record]:
        if not self._uuids:
            return records
        return [record for record in records if record_uuid(record) not in self._uuids]

    def written(self, records: list[Record]) -> None:
        """`records` were offered to a write that succeeded: none of them comes back."""
        if self._uuids:
            self._uuids.difference_update(record_uuid(record) for record in records)


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


def open_request(row: tuple[Any, ...] | Any) -> OpenRequest:
    """An OpenRequest from a stored request row (FIND_REQUEST_COLUMNS), for a response whose request an
    earlier run of the writer recorded."""
    return OpenRequest(row[0], row[1], row[2], row[3] or "", row[4] or "", row[5], bool(row[6]))


class Lookups(Protocol):
    """What the builder reads from the database, inside the sink's transaction."""

    def committed_ids(self, request_ids: list[str], response_ids: list[str]) -> tuple[set[str], set[str]]: ...
    def allocate_ids(self, table: str, count: int) -> list[int]: ...
    def latest_sessions(self, keys: list[str]) -> dict[str, tuple[str, int]]: ...  # key -> (id, expires_at)
    def parents(self, session_ids: list[str]) -> dict[str, str | None]: ...  # session id -> parent_id
    def find_requests(self, request_ids: list[str]) -> dict[str, OpenRequest]: ...


@dataclass(slots=True)
class BatchRows:
    """A batch as rows, in the column orders above; sorted where several writers may contend for them
    (sessions, rollups), so two transactions take their row locks in the same order."""

    sessions: list[list[Any]] = field(default_factory=list)
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    responses: list[tuple[Any, ...]] = field(default_factory=list)
    advanced: list[tuple[str, str | None, str]] = field(default_factory=list)  # (parent_id, chat_id, session id)
    usage: list[tuple[Any, ...]] = field(default_factory=list)
    usage_daily: list[tuple[Any, ...]] = field(default_factory=list)
    session_models: list[tuple[str, str, str]] = field(default_factory=list)  # (session id, model, provider)
    # Bookkeeping to apply once the transaction has committed.
    resolved: dict[str, tuple[str, int]] = field(default_factory=dict)
    opened: dict[str, OpenRequest] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)


def _not_committed(records: list[Record], lookups: Lookups) -> list[Record]:
    """Records replayed from an earlier run's journal that its last commits already wrote are left out
    (a crash between a commit and the journal's note of it replays that batch)."""
    requests = [r.request_id for r in records if r.replayed and isinstance(r, RequestRecord)]
    responses = [r.response_id for r in records if r.replayed and isinstance(r, ResponseRecord)]
    have_requests, have_responses = lookups.committed_ids(requests, responses)
    return [r for r in records if not r.replayed
            or (r.request_id not in have_requests if isinstance(r, RequestRecord)
                else r.response_id not in have_responses)]


class BatchBuilder:
    def __init__(self, session_timeout_ms: int, pricer: Pricer | None = None) -> None:
        self._session_timeout_ms = session_timeout_ms
        self._pricer = pricer
        # session key -> (session id, expires_at); trusted only to say "still active".
        self._sessions: collections.OrderedDict[str, tuple[str, int]] = collections.OrderedDict()
        # request uuid -> what its response row needs, for requests whose response is not written yet.
        self._open: dict[str, OpenRequest] = {}
        # (session, model, provider) known to be in session_models: only new ones are written.
        self._session_models: set[tuple[str, str, str]] = set()
        # (caller, opening text) -> session key: a conversation resends its opening text every turn,
        # and its MD5 was a tenth of building a batch; a dict lookup is a fifth of that.
        self._keys: dict[tuple[str | None, str], str] = {}
        self._key_chars = 0

    def build(self, records: list[Record], lookups: Lookups) -> BatchRows:
        if any(record.replayed for record in records):
            records = _not_committed(records, lookups)
        rows = BatchRows()
        self._requests([r for r in records if isinstance(r, RequestRecord)], lookups, rows)
        responses = [r for r in records if isinstance(r, ResponseRecord)]
        links = self._links(responses, lookups, rows)
        # Every session the batch touches, in one read (a sink may lock them here, in this order).
        touched = {row[0] for row in rows.sessions} | {link.session_id for link in links if link is not None}
        parents = lookups.parents(sorted(touched)) if touched else {}
        self._responses(responses, links, parents, lookups, rows)
        return rows

    def committed(self, rows: BatchRows) -> None:
        cache = self._sessions
        for key, value in rows.resolved.items():
            cache[key] = value
            cache.move_to_end(key)
        while len(cache) > SESSION_CACHE_SIZE:
            cache.popitem(last=False)
        self._open.update(rows.opened)
        for request_id in rows.closed:
            self._open.pop(request_id, None)
        if len(self._session_models) > KNOWN_SESSION_MODELS:
            self._session_models.clear()
        self._session_models.update(rows.session_models)

    # -- requests ----------------------------------------------------------------------------------

    def _requests(self, records: list[RequestRecord], lookups: Lookups, rows: BatchRows) -> None:
        if not records:
            return
        ids = lookups.allocate_ids("requests", len(records))
        now = int(time.time() * 1000)
        firsts = [record.first_user_text for record in records]
        keys = [None if record.session_hint else self._session_key(first, record.api_key_hash)
                for record, first in zip(records, firsts, strict=True)]
        # One query for every key the cache cannot vouch for (a new conversation, another replica's).
        stale = {key for record, key in zip(records, keys, strict=True)
                 if key is not None and (key not in self._sessions or self._sessions[key][1] < record.timestamp)}
        latest: dict[str, tuple[str, int] | None] = dict.fromkeys(stale)
        if stale:
            latest.update(lookups.latest_sessions(sorted(stale)))
        session_rows: dict[str, list[Any]] = {}
        models: set[tuple[str, str, str]] = set()
        for record, first_text, key, row_id in zip(records, firsts, keys, ids, strict=True):
            session_id, key = self._resolve_session(record, key, latest, rows.resolved, lookups)
            expires = record.timestamp + self._session_timeout_ms
            row = session_rows.get(session_id)
            if row is None:
                session_rows[session_id] = [session_id, key, first_text[:FIRST_MESSAGE_PREVIEW_CHARS],
                                            record.api_key_hash, 1, record.timestamp, record.timestamp, expires]
            else:
                row[4] += 1
                row[6] = max(row[6], record.timestamp)
                row[7] = max(row[7], expires)
            rows.requests.append((row_id, session_id, record.request_id, record.timestamp, record.method,
                                  record.path, text(record.openai_request), text(record.provider_request),
                                  record.model, record.provider, record.upstream_model, record.stream,
                                  record.api_key_hash, now))
            rows.opened[record.request_id] = OpenRequest(row_id, session_id, record.model, record.provider,
                                                         record.upstream_model, record.api_key_hash, record.stream)
            models.add((session_id, record.model, record.provider or ""))
        rows.sessions = [session_rows[session_id] for session_id in sorted(session_rows)]
        rows.session_models = sorted(models - self._session_models)

    def _session_key(self, first_text: str, api_key_hash: str | None) -> str:
        known = self._keys.get((api_key_hash, first_text))
        if known is None:
            if len(self._keys) >= SESSION_CACHE_SIZE or self._key_chars > KEY_CACHE_CHARS:
                self._keys.clear()
                self._key_chars = 0
            known = self._keys[api_key_hash, first_text] = session_key(first_text, api_key_hash)
            self._key_chars += len(first_text)
        return known

    def _resolve_session(self, record: RequestRecord, key: str | None, latest: dict[str, tuple[str, int] | None],
                         resolved: dict[str, tuple[str, int]], lookups: Lookups) -> tuple[str, str]:
        if key is None:
            assert record.session_hint is not None
            return record.session_hint, record.session_hint
        opened = resolved.get(key)
        known = opened or self._sessions.get(key)
        if known is not None and known[1] >= record.timestamp:
            session_id = known[0]
        elif opened is not None:
            # An earlier request of this batch went to the key's session, which has expired since
            # (a backlog written after an outage spans hours): the table does not know it yet.
            session_id = restarted_session_id(key, record.timestamp)
        else:
            if key not in latest:  # looked up already when None
                latest[key] = lookups.latest_sessions([key]).get(key)
            stored = latest.get(key)
            if stored is None:
                session_id = key
            elif stored[1] >= record.timestamp:
                session_id = stored[0]
            else:
                session_id = restarted_session_id(key, record.timestamp)
        resolved[key] = (session_id, record.timestamp + self._session_timeout_ms)
        return session_id, key

    # -- responses ---------------------------------------------------------------------------------

    def _links(self, records: list[ResponseRecord], lookups: Lookups, rows: BatchRows) -> list[OpenRequest | None]:
        links = [rows.opened.get(r.request_id) or self._open.get(r.request_id) for r in records]
        missing = [r.request_id for r, link in zip(records, links, strict=True) if link is None]
        if missing:
            found = lookups.find_requests(missing)
            links = [link or found.get(r.request_id) for r, link in zip(records, links, strict=True)]
        return links

    def _responses(self, records: list[ResponseRecord], links: list[OpenRequest | None],
                   parents: dict[str, str | None], lookups: Lookups, rows: BatchRows) -> None:
        """Each answer's parent is the session's previous answer: from this batch, else from the table."""
        if not records:
            return
        now = int(time.time() * 1000)
        ids = lookups.allocate_ids("responses", len(records))
        advanced: dict[str, tuple[str, str | None]] = {}
        rollups = RollupBatch()
        for record, link, row_id in zip(records, links, ids, strict=True):
            if link is None:
                raise UnknownRequest(f"response {record.response_id} for unknown request {record.request_id}")
            fields = response_fields(record)
            parent_id = parents.get(link.session_id)
            if fields.error is None:
                parents[link.session_id] = record.response_id
                advanced[link.session_id] = (record.response_id, fields.upstream_id)
            cost = self._pricer.cost(link.provider, link.model, link.upstream_model, fields.prompt_tokens,
                                     fields.completion_tokens, fields.cached_tokens) if self._pricer else None
            rows.responses.append((row_id, link.row_id, link.session_id, record.response_id, record.timestamp,
                                   fields.provider_response, fields.openai_response, parent_id, fields.upstream_id,
                                   fields.completion_tokens, fields.prompt_tokens, fields.total_tokens,
                                   fields.finish_reason, fields.error, record.status_code, record.duration_ms,
                                   record.ttft_ms, cost, link.model, link.provider, link.api_key_hash, now))
            rollups.add(Exchange(record.timestamp, link.model, link.provider, link.api_key_hash,
                                 fields.error is not None, link.stream, fields.prompt_tokens,
                                 fields.completion_tokens, fields.total_tokens, cost, record.duration_ms,
                                 record.ttft_ms))
        rows.advanced = [(response_id, upstream_id, session_id)
                         for session_id, (response_id, upstream_id) in sorted(advanced.items())]
        rows.usage = sorted(rollups.rows())
        rows.usage_daily = sorted(daily(rows.usage))
        rows.closed = [record.request_id for record in records]
