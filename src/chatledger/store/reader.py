"""The read side of the store: every query the query API makes, as SQLAlchemy Core.

Lists are ordered by (sort key, id) and paged either by offset or by keyset: a cursor holds the
last row's sort key and id, so a page deep into millions of rows costs what the first one does.
Indexes each query relies on are named where the query is built (0001_initial.py creates them).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from chatledger.errors import InvalidRequest
from chatledger.store import search_index
from chatledger.store.rollups import HOUR_MS
from chatledger.store.schema import requests, responses, session_models, sessions, usage_daily, usage_hourly

Sort = Literal["time", "duration"]
Order = Literal["asc", "desc"]
MAX_ROW_ID = 2**63 - 1

SESSION_COLUMNS = (sessions.c.id, sessions.c.chat_id, sessions.c.parent_id, sessions.c.first_user_message,
                   sessions.c.api_key_hash, sessions.c.message_count, sessions.c.created_at,
                   sessions.c.updated_at, sessions.c.expires_at)
REQUEST_COLUMNS = (requests.c.id, requests.c.request_id, requests.c.session_id, requests.c.timestamp,
                   requests.c.method, requests.c.path, requests.c.model, requests.c.provider,
                   requests.c.upstream_model, requests.c.stream, requests.c.api_key_hash, requests.c.created_at)
# `qwen_request`/`qwen_response` are virtual columns on SQLite only; computing them here works everywhere.
REQUEST_BODIES = (requests.c.openai_request, requests.c.provider_request,
                  sa.func.coalesce(requests.c.provider_request, requests.c.openai_request).label("qwen_request"))
RESPONSE_COLUMNS = (responses.c.id, responses.c.response_id, responses.c.request_id, responses.c.session_id,
                    responses.c.timestamp, responses.c.duration_ms, responses.c.ttft_ms, responses.c.prompt_tokens,
                    responses.c.completion_tokens, responses.c.total_tokens, responses.c.finish_reason,
                    responses.c.error, responses.c.status_code, responses.c.parent_id, responses.c.upstream_id,
                    responses.c.created_at)
RESPONSE_BODIES = (responses.c.openai_response, responses.c.provider_response,
                   sa.func.coalesce(responses.c.provider_response, responses.c.openai_response).label("qwen_response"))


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"

    def __init__(self, message: str = "The cursor is not one this list handed out with these sort parameters.") \
            -> None:
        super().__init__(message, param="cursor")


@dataclass(frozen=True, slots=True)
class Filters:
    model: str | None = None
    provider: str | None = None
    session_id: str | None = None
    api_key_hash: str | None = None
    status: Literal["ok", "error"] | None = None
    since: int | None = None  # ms, inclusive (`from`)
    until: int | None = None  # ms, exclusive (`to`)


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int = 50
    offset: int = 0
    cursor: str | None = None
    sort: Sort = "time"
    order: Order = "desc"


@dataclass(slots=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    next_cursor: str | None = None
    has_more: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    sort: str
    order: str
    key: int
    id: int | str
    total: int

    def encode(self) -> str:
        raw = orjson.dumps([self.sort, self.order, self.key, self.id, self.total])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str, sort: str, order: str, id_type: type[int] | type[str]) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            sort_, order_, key, id_, total = orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise InvalidCursor() from exc
        if (sort_, order_) != (sort, order):
            raise InvalidCursor("This cursor was made with another sort or order; pass the same ones again.")
        good_id = _is_int(id_) if id_type is int else isinstance(id_, str)
        if not (_is_int(key) and good_id and _is_int(total) and total >= 0):
            raise InvalidCursor()
        return cls(sort_, order_, key, id_, total)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ROW_ID


def _after(key: sa.ColumnElement[Any], id_column: sa.ColumnElement[Any], cursor: Cursor,
           descending: bool) -> sa.ColumnElement[bool]:
    """Rows strictly past the cursor, written so the first term is an index range on the sort key."""
    if descending:
        return sa.and_(key <= cursor.key, sa.or_(key < cursor.key, id_column < cursor.id))
    return sa.and_(key >= cursor.key, sa.or_(key > cursor.key, id_column > cursor.id))


def _status(error: sa.ColumnElement[Any], status: str) -> sa.ColumnElement[bool]:
    return error.is_not(None) if status == "error" else error.is_(None)


def _exists(*conditions: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """EXISTS (SELECT 1 ...): with `SELECT *` SQLite reads the row behind the index entry it found,
    where an index holding every column the conditions name would have answered alone."""
    return sa.select(sa.literal(1)).where(*conditions).exists()


def _ref(ref: str, row_id: sa.ColumnElement[Any], uuid: sa.ColumnElement[Any]) -> sa.ColumnElement[bool] | None:
    """An id in a URL is either the integer row id or the UUID the gateway handed out (each indexed)."""
    if ref.isascii() and ref.isdigit():
        number = int(ref)
        return row_id == number if number <= MAX_ROW_ID else None
    return uuid == ref


class Reader:
    def __init__(self, engine: sa.Engine, ledger_path: Path | None = None) -> None:
        """`ledger_path`: the SQLite file, whose search index (a file of its own) the reader attaches."""
        self.engine = engine
        self.ledger_path = ledger_path
        if ledger_path is not None:
            search_index.attach_on_checkout(engine, search_index.search_path(ledger_path))

    # -- paging -------------------------------------------------------------------------------------

    def _page(self, columns: tuple[Any, ...], from_: sa.FromClause, where: list[sa.ColumnElement[bool]],
              keys: dict[str, sa.ColumnElement[Any]], id_column: sa.ColumnElement[Any], page: PageRequest) -> Page:
        with self.engine.connect() as connection:
            return self._read_page(connection, columns, from_, where, keys, id_column, page)

    def _read_page(self, connection: sa.Connection, columns: tuple[Any, ...], from_: sa.FromClause,
                   where: list[sa.ColumnElement[bool]], keys: dict[str, sa.ColumnElement[Any]],
                   id_column: sa.ColumnElement[Any], page: PageRequest, total: int | None = None) -> Page:
        """One page, in the caller's transaction; `total`, when the caller knows it, saves the COUNT."""
        key = keys[page.sort]
        descending = page.order == "desc"
        query = sa.select(*columns, key.label("sort_key")).select_from(from_).where(*where)
        if page.cursor is None:
            # COUNT only on the first page; later pages carry the figure in their cursor.
            if total is None:
                total = connection.execute(sa.select(sa.func.count()).select_from(from_).where(*where)).scalar_one()
            query = query.offset(page.offset)
        else:
            id_type = str if isinstance(id_column.type, sa.Text) else int
            cursor = Cursor.decode(page.cursor, page.sort, page.order, id_type)
            total = cursor.total
            query = query.where(_after(key, id_column, cursor, descending))
        ordering = (key.desc(), id_column.desc()) if descending else (key.asc(), id_column.asc())
        # One row more than asked tells whether there is a next page.
        rows = [dict(r) for r in connection.execute(query.order_by(*ordering).limit(page.limit + 1)).mappings()]
        has_more = len(rows) > page.limit
        rows = rows[:page.limit]
        keys_of_rows = [row.pop("sort_key") for row in rows]
        next_cursor = None
        if has_more and rows:
            next_cursor = Cursor(page.sort, page.order, keys_of_rows[-1], rows[-1]["id"], total).encode()
        return Page(rows, total, next_cursor, has_more)

    # -- sessions -----------------------------------------------------------------------------------

    def list_sessions(self, filters: Filters, page: PageRequest) -> Page:
        where: list[sa.ColumnElement[bool]] = []
        if filters.api_key_hash is not None:
            where.append(sessions.c.api_key_hash == filters.api_key_hash)  # no index: a scan along created_at
        if filters.since is not None:
            where.append(sessions.c.created_at >= filters.since)
        if filters.until is not None:
            where.append(sessions.c.created_at < filters.until)
        if filters.status is not None:
            # status=error: one probe of the partial idx_responses_errors_session (0004) per session.
            where.append(_exists(responses.c.session_id == sessions.c.id, _status(responses.c.error, filters.status)))
        model_match = [column == value for column, value in ((session_models.c.model, filters.model),
                                                              (session_models.c.provider, filters.provider))
                       if value is not None]
        # time: idx_sessions_created_at (PostgreSQL wants it as (created_at, id) for the tie-break);
        # duration (the span from first to last message) has no index and sorts the filtered rows.
        keys = {"time": sessions.c.created_at, "duration": sessions.c.updated_at - sessions.c.created_at}
        # A model or provider: one probe of session_models' primary key (session, model, provider) per
        # candidate session (0006: the writer keeps a row per session and model it used).
        probe = [_exists(session_models.c.session_id == sessions.c.id, *model_match)] if model_match else []
        with self.engine.connect() as connection:
            total = None
            if page.cursor is None:
                total = _count_sessions(connection, filters)
                if total is None and model_match:
                    total = connection.execute(sa.select(sa.func.count()).select_from(sessions)
                                               .where(*where, *probe)).scalar_one()
            if model_match and page.sort == "time" and \
                    _few_sessions(connection, page, total if total is not None else _cursor_total(page)):
                # So few sessions have the model (or provider) that walking sessions newest first would
                # probe nearly all of them to fill a page: start from its sessions instead (read from
                # idx_session_models_model or _provider alone) and sort them. `+ 0` keeps SQLite from
                # walking idx_sessions_created_at for the order instead.
                where.append(sessions.c.id.in_(sa.select(session_models.c.session_id).where(*model_match)))
                keys["time"] = sessions.c.created_at + 0
            else:
                where += probe
            return self._read_page(connection, SESSION_COLUMNS, sessions, where, keys, sessions.c.id, page, total)

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(*SESSION_COLUMNS).where(sessions.c.id == session_id)).mappings().first()
        return dict(row) if row else None

    def session_stats(self, session_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            if connection.execute(sa.select(sessions.c.id).where(sessions.c.id == session_id)).first() is None:
                return None
            # idx_requests_session_id and idx_responses_session_id bound both scans to this session.
            asked = connection.execute(sa.select(
                sa.func.count().label("request_count"),
                sa.func.min(requests.c.timestamp).label("first_timestamp"),
                sa.func.max(requests.c.timestamp).label("last_request"),
            ).where(requests.c.session_id == session_id)).mappings().one()
            answered = connection.execute(sa.select(
                *_usage_columns(),
                sa.func.max(responses.c.timestamp).label("last_response"),
            ).where(responses.c.session_id == session_id)).mappings().one()
        last = max((t for t in (asked["last_request"], answered["last_response"]) if t is not None), default=None)
        usage = _usage(answered)
        return {"session_id": session_id, "request_count": asked["request_count"],
                "response_count": usage.pop("total_responses"), **usage,
                "first_timestamp": asked["first_timestamp"], "last_timestamp": last}

    def delete_session(self, session_id: str) -> list[int] | None:
        """The query API's one write: the session goes, and its requests and responses with it through
        ON DELETE CASCADE (the engine turns `PRAGMA foreign_keys` on for every SQLite connection).
        None when there was no such session; else the ids of the responses that went, which an index
        in a file of its own (SQLite's search index) must forget too."""
        with self.engine.begin() as connection:
            answers = list(connection.execute(sa.select(responses.c.id).where(responses.c.session_id == session_id))
                           .scalars()) if self.ledger_path is not None else []
            deleted = connection.execute(sa.delete(sessions).where(sessions.c.id == session_id)).rowcount
        return answers if deleted else None

    def list_requests(self, filters: Filters, page: PageRequest, *, include_bodies: bool = False) -> Page:
        where: list[sa.ColumnElement[bool]] = []
        if filters.session_id is not None:
            where.append(requests.c.session_id == filters.session_id)  # idx_requests_session_id
        # model and api_key_hash: idx_requests_model_timestamp, idx_requests_api_key_timestamp (0002);
        # provider has no index and filters a walk along the sort index (cheap: few providers).
        if filters.model is not None:
            where.append(requests.c.model == filters.model)
        if filters.provider is not None:
            where.append(requests.c.provider == filters.provider)
        if filters.api_key_hash is not None:
            where.append(requests.c.api_key_hash == filters.api_key_hash)
        if filters.since is not None:
            where.append(requests.c.timestamp >= filters.since)
        if filters.until is not None:
            where.append(requests.c.timestamp < filters.until)
        if filters.status is not None:
            # One probe per request: of idx_responses_errors_request (0004, partial) for errors, of
            # idx_responses_request_id for `ok`.
            where.append(_exists(responses.c.request_id == requests.c.id, _status(responses.c.error, filters.status)))
        # time: idx_requests_timestamp (on SQLite every index ends with the rowid `id`, so it also serves
        # the tie-break; PostgreSQL wants (timestamp, id)). duration is looked up per request through
        # idx_responses_request_id and sorted: fine per session, use /v1/responses?sort=duration at scale.
        duration = sa.select(sa.func.max(responses.c.duration_ms)).where(
            responses.c.request_id == requests.c.id).scalar_subquery()
        keys = {"time": requests.c.timestamp, "duration": sa.func.coalesce(duration, -1)}
        columns = REQUEST_COLUMNS + REQUEST_BODIES if include_bodies else REQUEST_COLUMNS
        with self.engine.connect() as connection:
            total = None
            if page.cursor is None and _only(filters, status="error"):
                # From the partial index alone: a COUNT over requests would probe every request's response.
                total = _distinct_errors(connection, responses.c.request_id, "idx_responses_errors_request")
            return self._read_page(connection, columns, requests, where, keys, requests.c.id, page, total)

    def get_request(self, ref: str) -> dict[str, Any] | None:
        condition = _ref(ref, requests.c.id, requests.c.request_id)
        if condition is None:
            return None
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(*REQUEST_COLUMNS, *REQUEST_BODIES).where(condition)).mappings().first()
        return dict(row) if row else None

    def response_of_request(self, ref: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the request exists, its latest response)."""
        condition = _ref(ref, requests.c.id, requests.c.request_id)
        if condition is None:
            return False, None
        with self.engine.connect() as connection:
            request_row = connection.execute(sa.select(requests.c.id).where(condition)).first()
            if request_row is None:
                return False, None
            row = connection.execute(
                sa.select(*RESPONSE_COLUMNS, *RESPONSE_BODIES).where(responses.c.request_id == request_row.id)
                .order_by(responses.c.id.desc()).limit(1)).mappings().first()  # idx_responses_request_id
        return True, dict(row) if row else None

    # -- responses ----------------------------------------------------------------------------------

    def _response_scope(self, filters: Filters, *, walk_sort_index: bool = False
                        ) -> tuple[sa.FromClause, list[sa.ColumnElement[bool]]]:
        where: list[sa.ColumnElement[bool]] = []
        from_: sa.FromClause = responses
        if filters.session_id is not None:
            where.append(responses.c.session_id == filters.session_id)  # idx_responses_session_id
        if filters.status is not None:
            where.append(_status(responses.c.error, filters.status))
        if filters.since is not None:
            where.append(responses.c.timestamp >= filters.since)
        if filters.until is not None:
            where.append(responses.c.timestamp < filters.until)
        attributes = _request_attributes(filters)
        if attributes and walk_sort_index:
            # Walking the responses in time order tests each one's copy of its request's attributes
            # (0002; written with the row, and what the rollups that chose this plan are keyed by):
            # joining would read each request's row past its body. No index on these: none to avoid.
            where += [responses.c[name] == value for name, value in attributes.items()]
        elif attributes:
            # From the attribute's index on requests (SQLite's choice), one primary-key probe per match.
            from_ = responses.join(requests, requests.c.id == responses.c.request_id)
            where += [requests.c[name] == value for name, value in attributes.items()]
        return from_, where

    def _responses_where(self, filters: Filters, sort: Sort, walk_sort_index: bool = False
                         ) -> tuple[sa.FromClause, list[sa.ColumnElement[bool]]]:
        from_, where = self._response_scope(filters, walk_sort_index=walk_sort_index)
        if sort == "duration":
            # The writer always records a duration; a row without one (imported) has no place in this order.
            where.append(responses.c.duration_ms.is_not(None))
        return from_, where

    def list_responses(self, filters: Filters, page: PageRequest, *, include_bodies: bool = False) -> Page:
        # time: idx_responses_timestamp; duration: idx_responses_duration (migration 0002). On SQLite both
        # end with the rowid `id`, serving the tie-break; PostgreSQL wants (timestamp, id), (duration_ms, id).
        keys = {"time": responses.c.timestamp, "duration": responses.c.duration_ms}
        columns = RESPONSE_COLUMNS + RESPONSE_BODIES if include_bodies else RESPONSE_COLUMNS
        with self.engine.connect() as connection:
            # Worth a look at the rollups when counting (or listing) would read rows or join: a status or
            # a request attribute. Unfiltered, COUNT walks an index about as fast; so does it for errors
            # alone, along their partial index (0004), which holds just them.
            attributes = bool(_request_attributes(filters))
            errors_only = filters.status == "error" and not attributes
            useful = page.sort == "time" and not errors_only and (filters.status is not None or attributes)
            counts = _rollup_counts(connection, filters) if useful else None
            total = None
            if page.sort == "duration" and page.cursor is None and filters == Filters():
                # COUNT(*) without a condition counts index pages' cells without reading them; testing
                # every entry of idx_responses_duration for a duration cost three times as much.
                total = connection.execute(sa.select(sa.func.count()).select_from(responses)).scalar_one() - \
                    connection.execute(sa.select(sa.func.count()).where(responses.c.duration_ms.is_(None))).scalar_one()
            # The rollups count exactly what these filters keep, unless a time range cuts through hours.
            if counts is not None and all(t is None or t % HOUR_MS == 0 for t in (filters.since, filters.until)):
                total = counts.matching(filters.status)
            walk = _walk_sort_index(counts, filters, page)
            if walk and total is None and page.cursor is None:
                # Counted the way SQLite plans it (from the attribute's index): walking would read every row.
                from_, where = self._responses_where(filters, page.sort)
                total = connection.execute(sa.select(sa.func.count()).select_from(from_).where(*where)).scalar_one()
            from_, where = self._responses_where(filters, page.sort, walk)
            if walk and counts is not None and counts.first_hour is not None and counts.last_hour is not None:
                # Exact bounds (the rollups mirror the rows): the walk starts where the matches are.
                where += [responses.c.timestamp >= counts.first_hour,
                          responses.c.timestamp < counts.last_hour + HOUR_MS]
            return self._read_page(connection, columns, from_, where, keys, responses.c.id, page, total)

    def get_response(self, ref: str) -> dict[str, Any] | None:
        condition = _ref(ref, responses.c.id, responses.c.response_id)
        if condition is None:
            return None
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(*RESPONSE_COLUMNS, *RESPONSE_BODIES).where(condition)).mappings().first()
        return dict(row) if row else None

    def response_stats(self, filters: Filters) -> dict[str, Any]:
        """Totals over every matching response. Filtered by model, provider or key only (or not at
        all) they come from the writer's hourly rollups, which mirror the rows exactly, so they cost
        the same at a million rows as at ten; other filters (a session, a status, a time range that
        does not fall on hours) are answered from the rows themselves, through their indexes."""
        if filters.session_id is None and filters.status is None and filters.since is None \
                and filters.until is None:
            return self._stats_from_rollups(filters)
        from_, where = self._response_scope(filters)
        if from_ is responses:
            from_ = responses.join(requests, requests.c.id == responses.c.request_id)
        query = sa.select(
            *_usage_columns(),
            sa.func.sum(sa.case((requests.c.stream, 1), else_=0)).label("streaming_responses"),
            sa.func.avg(responses.c.ttft_ms).label("avg_ttft_ms"),
            sa.func.min(responses.c.timestamp).label("first_timestamp"),
            sa.func.max(responses.c.timestamp).label("last_timestamp"),
        ).select_from(from_).where(*where)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().one()
        return {**_usage(row), "streaming_responses": int(row["streaming_responses"] or 0),
                "avg_ttft_ms": round(row["avg_ttft_ms"] or 0),
                "first_timestamp": row["first_timestamp"], "last_timestamp": row["last_timestamp"]}


    def _stats_from_rollups(self, filters: Filters) -> dict[str, Any]:
        where = [column == value for column, value in ((usage_daily.c.model, filters.model),
                                                        (usage_daily.c.provider, filters.provider),
                                                        (usage_daily.c.api_key_hash, filters.api_key_hash))
                 if value is not None]
        # All time: the daily rollups (24 times fewer rows than the hourly ones). Timed responses: the
        # histogram counts exactly those with a duration. One scan for all the sums.
        timed = sa.func.coalesce(sa.func.sum(sum(usage_daily.c[f"h{i:02d}"] for i in range(20))), 0)
        sums = sa.select(timed.label("timed"), *(sa.func.coalesce(sa.func.sum(usage_daily.c[name]), 0).label(name)
                                                 for name in ("requests", "errors", "streamed", "prompt_tokens",
                                                              "completion_tokens", "total_tokens", "cost",
                                                              "duration_ms_sum", "ttft_ms_sum", "ttft_count"))
                         ).where(*where)
        with self.engine.connect() as connection:
            row = connection.execute(sums).mappings().one()
            timed_count = row["timed"]
            bounds = self._time_bounds(connection, filters)
        return {"total_responses": int(row["requests"]), "prompt_tokens": int(row["prompt_tokens"]),
                "completion_tokens": int(row["completion_tokens"]), "total_tokens": int(row["total_tokens"]),
                "avg_duration_ms": round(row["duration_ms_sum"] / timed_count) if timed_count else 0,
                "error_count": int(row["errors"]), "streaming_responses": int(row["streamed"]),
                "avg_ttft_ms": round(row["ttft_ms_sum"] / row["ttft_count"]) if row["ttft_count"] else 0,
                "total_cost": round(float(row["cost"]), 10), **bounds}

    def _time_bounds(self, connection: sa.Connection, filters: Filters) -> dict[str, int | None]:
        if filters.model is None and filters.provider is None and filters.api_key_hash is None:
            # min/max on idx_responses_timestamp: two index probes.
            first = connection.execute(sa.select(sa.func.min(responses.c.timestamp))).scalar()
            last = connection.execute(sa.select(sa.func.max(responses.c.timestamp))).scalar()
            return {"first_timestamp": first, "last_timestamp": last}
        where = [column == value for column, value in ((requests.c.model, filters.model),
                                                        (requests.c.provider, filters.provider),
                                                        (requests.c.api_key_hash, filters.api_key_hash))
                 if value is not None]
        # idx_requests_model_timestamp / idx_requests_api_key_timestamp bound these.
        first = connection.execute(sa.select(sa.func.min(requests.c.timestamp)).where(*where)).scalar()
        last = connection.execute(sa.select(sa.func.max(requests.c.timestamp)).where(*where)).scalar()
        return {"first_timestamp": first, "last_timestamp": last}


def _only(filters: Filters, **wanted: object) -> bool:
    """Whether `filters` sets exactly these fields to these values, and nothing else."""
    fields = {field.name: getattr(filters, field.name) for field in dataclasses.fields(filters)}
    return all(fields[name] == value for name, value in wanted.items()) and \
        all(value is None for name, value in fields.items() if name not in wanted)


def _count_sessions(connection: sa.Connection, filters: Filters) -> int | None:
    """The sessions matching a model and/or provider, or having an error, counted from an index alone
    (each response's session is a session: the foreign key says so); None for the other filters,
    which the list counts its own way."""
    wanted = {name: value for name, value in (("model", filters.model), ("provider", filters.provider))
              if value is not None}
    if wanted and _only(filters, **wanted):
        # idx_session_models_model or _provider (0006): their sessions, in order, covering.
        return connection.execute(sa.select(sa.func.count(sa.distinct(session_models.c.session_id))).where(
            *(session_models.c[name] == value for name, value in wanted.items()))).scalar_one()
    if _only(filters, status="error"):
        return _distinct_errors(connection, responses.c.session_id, "idx_responses_errors_session")
    return None


def _distinct_errors(connection: sa.Connection, column: sa.Column[Any], index: str) -> int:
    """How many sessions or requests have an error, from the partial index on that column (0004), in
    its order. SQLite is told which: it would take either partial index (they have the same WHERE) and
    sort a copy of the column, or read each row for it."""
    if connection.dialect.name == "sqlite":
        return connection.execute(sa.text(f"SELECT COUNT(DISTINCT {column.name}) FROM responses INDEXED BY {index} "
                                          "WHERE error IS NOT NULL")).scalar_one()
    query = sa.select(sa.func.count(sa.distinct(column))).where(responses.c.error.is_not(None))
    return connection.execute(query).scalar_one()


def _cursor_total(page: PageRequest) -> int:
    assert page.cursor is not None
    return Cursor.decode(page.cursor, page.sort, page.order, str).total


def _session_estimate(connection: sa.Connection) -> int:
    """About how many sessions there are, without counting them: SQLite's newest rowid (sessions are
    rarely deleted), PostgreSQL's planner statistics (a COUNT while they have none)."""
    if connection.dialect.name == "sqlite":
        return int(connection.execute(sa.text("SELECT COALESCE(MAX(rowid), 0) FROM sessions")).scalar_one())
    estimate = connection.execute(sa.text(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass('sessions')")).scalar()
    if estimate is None or estimate < 1:
        return int(connection.execute(sa.select(sa.func.count()).select_from(sessions)).scalar_one())
    return int(estimate)


def _few_sessions(connection: sa.Connection, page: PageRequest, matching: int) -> bool:
    """Whether to list a model's (or provider's) sessions from session_models rather than walk every
    session newest first with a probe each. The walk probes about needed x sessions / matching
    sessions; reading the matching entries of session_models, then each matching session and sorting
    them, is taken to cost about 4 probes per matching session: a rough estimate, which only has to
    tell a model in most sessions from one in a few."""
    needed = (page.offset if page.cursor is None else 0) + page.limit + 1
    return needed * _session_estimate(connection) > 4 * matching * matching


@dataclass(frozen=True, slots=True)
class RollupCounts:
    """Responses as the hourly rollups count them: those whose request matches the model, provider
    and key filters (`scoped`), the errors among those, and the first and last hour (bucket start, ms)
    holding a response that matches every filter, status included (None if there is none). `all` and
    `all_errors` are every response and every error in the time range; with attribute filters `all`
    is an estimate (for choosing a plan, never shown)."""

    all: int
    scoped: int
    errors: int
    first_hour: int | None
    last_hour: int | None
    all_errors: int = 0  # errors whatever their request (what the partial errors index holds)

    def matching(self, status: str | None) -> int:
        if status is None:
            return self.scoped
        return self.errors if status == "error" else self.scoped - self.errors


def _request_attributes(filters: Filters) -> dict[str, str]:
    return {name: value for name, value in (("model", filters.model), ("provider", filters.provider),
                                            ("api_key_hash", filters.api_key_hash)) if value is not None}


def _rollup_counts(connection: sa.Connection, filters: Filters) -> RollupCounts | None:
    """The scope's rows of usage_hourly (hours x models x keys rows, not one per exchange), read on its
    narrow idx_usage_hourly_model (0004) alone, a seek for a model; a time range is widened to whole
    hours. With attributes, what the plan is chosen against (all responses, all errors) is taken from
    the responses' indexes, cheaper than every hour's rollups. None when the rollups cannot tell: a
    session filter, or an empty attribute (they file NULL under '')."""
    attributes = _request_attributes(filters)
    if filters.session_id is not None or "" in attributes.values():
        return None
    u = usage_hourly
    hours: list[sa.ColumnElement[bool]] = []
    if filters.since is not None:
        hours.append(u.c.bucket_start >= filters.since - filters.since % HOUR_MS)
    if filters.until is not None:
        hours.append(u.c.bucket_start < filters.until)
    matched: sa.ColumnElement[Any] = u.c.bucket_start
    if filters.status is not None:
        matched = sa.case((u.c.errors > 0 if filters.status == "error" else u.c.requests > u.c.errors,
                           u.c.bucket_start))
    scope = [u.c[name] == value for name, value in attributes.items()]
    requests_, errors, first, last = connection.execute(
        sa.select(sa.func.sum(u.c.requests), sa.func.sum(u.c.errors), sa.func.min(matched), sa.func.max(matched))
        .where(*hours, *scope)).one()
    everything, all_errors = requests_, errors
    if scope:
        # For choosing a plan only: summing every hour's rollups would cost more than the page.
        everything = _responses_between(connection, filters.since, filters.until)
        if filters.status == "error":
            all_errors = connection.execute(sa.select(sa.func.count()).select_from(responses).where(
                responses.c.error.is_not(None), *_time_range(responses.c.timestamp, filters))).scalar_one()
    return RollupCounts(int(everything or 0), int(requests_ or 0), int(errors or 0), first, last,
                        int(all_errors or 0))


def _time_range(column: sa.ColumnElement[Any], filters: Filters) -> list[sa.ColumnElement[bool]]:
    conditions = []
    if filters.since is not None:
        conditions.append(column >= filters.since)
    if filters.until is not None:
        conditions.append(column < filters.until)
    return conditions


def _responses_between(connection: sa.Connection, since: int | None, until: int | None) -> int:
    """About how many responses [since, until) holds, from two probes of idx_responses_timestamp: the
    span of their row ids, which are handed out in commit order (close to time order)."""
    t, row_id = responses.c.timestamp, responses.c.id
    first = connection.execute(sa.select(row_id).where(*([t >= since] if since is not None else []))
                               .order_by(t, row_id).limit(1)).scalar()
    last = connection.execute(sa.select(row_id).where(*([t < until] if until is not None else []))
                              .order_by(t.desc(), row_id.desc()).limit(1)).scalar()
    return max(0, last - first + 1) if first is not None and last is not None else 0


def _walk_sort_index(counts: RollupCounts | None, filters: Filters, page: PageRequest) -> bool:
    """Whether a response list in time order, filtered on its request's model, provider or key, should
    walk idx_responses_timestamp (for errors, the partial idx_responses_errors_timestamp), testing
    each response's copy of its request's attributes, rather than let SQLite start from that
    attribute's index on `requests` (its choice), which reads and sorts every response of the model
    or key before the first row comes out: ~120k rows, over a second, for a common model in a
    million. Walking (between the first and last hours with a match) reads about rows-needed /
    share-matching rows if the matches are spread over time, each about half the cost of a row of the
    other plan, so it wins unless the filters keep few rows. Only in time order (list_responses reads
    no counts for `duration`): durations depend on the model and the status too much (errors are
    fast) for that estimate to hold."""
    if counts is None or not _request_attributes(filters) or counts.first_hour is None:
        return False
    needed = (page.offset if page.cursor is None else 0) + page.limit + 1
    # Errors are walked along the partial idx_responses_errors_timestamp (0004), which holds only them.
    walked = counts.all_errors if filters.status == "error" else counts.all
    return needed * walked < 2 * counts.scoped * max(counts.matching(filters.status), 1)


def _usage_columns() -> tuple[sa.ColumnElement[Any], ...]:
    return (
        sa.func.count().label("total_responses"),
        sa.func.sum(responses.c.prompt_tokens).label("prompt_tokens"),
        sa.func.sum(responses.c.completion_tokens).label("completion_tokens"),
        sa.func.sum(responses.c.total_tokens).label("total_tokens"),
        sa.func.avg(responses.c.duration_ms).label("avg_duration_ms"),
        sa.func.sum(sa.case((responses.c.error.is_not(None), 1), else_=0)).label("error_count"),
    )


def _usage(row: sa.RowMapping) -> dict[str, int]:
    """Sums and averages as integers, 0 when there is nothing to add up (scripts do arithmetic on them)."""
    return {"total_responses": row["total_responses"], "prompt_tokens": int(row["prompt_tokens"] or 0),
            "completion_tokens": int(row["completion_tokens"] or 0), "total_tokens": int(row["total_tokens"] or 0),
            "avg_duration_ms": round(row["avg_duration_ms"] or 0), "error_count": int(row["error_count"] or 0)}
