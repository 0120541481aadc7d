"""Full-text search over prompts and answers: SQLite FTS5 in the index file beside the ledger
(search_index.py, attached to the reader's connections as `search`), or on PostgreSQL a generated
tsvector with a GIN index ('simple' configuration). Both are filled behind the recorder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

_TOKEN = re.compile(r"\w+", re.UNICODE)
FTS_QUERY_ERRORS = ("fts5", "syntax", "no such column", "unterminated", "unknown special query")


class BadSearch(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SearchQuery:
    q: str
    syntax: Literal["plain", "fts"] = "plain"
    sort: Literal["recent", "relevance"] = "recent"
    limit: int = 20
    model: str | None = None
    provider: str | None = None
    session_id: str | None = None
    api_key_hash: str | None = None
    since: int | None = None
    until: int | None = None


def fts_expression(query: SearchQuery) -> str:
    """Plain text means: every word must appear (each quoted, so no character is an operator)."""
    if query.syntax == "fts":
        return query.q
    words = _TOKEN.findall(query.q)
    if not words:
        raise BadSearch("The search needs at least one word.")
    return " ".join(f'"{word}"' for word in words)


def _filters(query: SearchQuery, params: dict[str, Any]) -> list[str]:
    clauses = []
    for name, column in (("model", "q.model"), ("provider", "q.provider"), ("session_id", "q.session_id"),
                         ("api_key_hash", "q.api_key_hash")):
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{column} = :{name}")
            params[name] = value
    if query.since is not None:
        clauses.append("r.timestamp >= :since")
        params["since"] = query.since
    if query.until is not None:
        clauses.append("r.timestamp < :until")
        params["until"] = query.until
    return clauses


COLUMNS = """r.id AS id, r.response_id, q.request_id, q.session_id, q.model, q.provider, r.timestamp,
               r.finish_reason, r.error,
               snippet(search_index, 0, '[', ']', '…', 16) AS prompt_snippet,
               snippet(search_index, 1, '[', ']', '…', 16) AS response_snippet"""


def search(connection: sa.Connection, query: SearchQuery) -> list[dict[str, Any]]:
    if connection.dialect.name == "postgresql":
        return _search_postgres(connection, query)
    params: dict[str, Any] = {"expression": fts_expression(query), "limit": query.limit}
    filters = _filters(query, params)
    try:
        if query.sort == "relevance" and not filters:
            rows = _ranked_first(connection, params)
            if rows is not None:
                return rows
        return _joined_first(connection, filters, params, query.sort)
    except sa.exc.OperationalError as exc:
        # FTS5 reports a query it cannot parse as an OperationalError; only `syntax=fts` can cause one.
        if query.syntax == "fts" and any(word in str(exc.orig).lower() for word in FTS_QUERY_ERRORS):
            raise BadSearch(f"Cannot read the search expression: {exc.orig}") from exc
        if "no such table: search_index" in str(exc.orig):
            return []  # the indexer has not created its file yet: nothing is indexed
        raise


def _joined_first(connection: sa.Connection, filters: list[str], params: dict[str, Any],
                  sort: str) -> list[dict[str, Any]]:
    """Each match joined to its response and request, then ordered: newest first walks the index
    backwards by rowid and stops at `limit`; by relevance (with filters on the rows) it ranks every
    match that passes them."""
    order = "search_index.rowid DESC" if sort == "recent" else "score, search_index.rowid DESC"
    # A score only where it orders the page: bm25() reads the whole doclist of every word for its
    # frequency, which for a common word is most of the index (80 ms for "the" in a million rows).
    score = "NULL" if sort == "recent" else "bm25(search_index)"
    sql = f"""
        SELECT {COLUMNS}, {score} AS score
        FROM search_index
        JOIN responses r ON r.id = search_index.rowid
        JOIN requests q ON q.id = r.request_id
        WHERE {' AND '.join(["search_index MATCH :expression", *filters])}
        ORDER BY {order}
        LIMIT :limit
    """
    return [dict(row) for row in connection.execute(sa.text(sql), params).mappings()]


def _ranked_first(connection: sa.Connection, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """By relevance without filters: bm25 ranks the matches inside FTS5 and only the best `limit` are
    joined to their rows and given snippets (joining every match before sorting cost three times what
    ranking does: 200 ms for a word in 56k exchanges of a million). The CROSS JOIN keeps `hits` the
    outer loop, so the second MATCH is a rowid lookup. None when a hit has no row any more (deleted,
    and not yet forgotten by the index): the caller then ranks only the rows there are."""
    sql = f"""
        WITH hits AS (
            SELECT rowid AS id, bm25(search_index) AS score FROM search_index
            WHERE search_index MATCH :expression
            ORDER BY score, rowid DESC
            LIMIT :limit
        ),
        counted AS (SELECT id, score, COUNT(*) OVER () AS hit_count FROM hits)
        SELECT hits.hit_count, {COLUMNS}, hits.score AS score
        FROM counted AS hits
        CROSS JOIN search_index ON search_index.rowid = hits.id
        JOIN responses r ON r.id = hits.id
        JOIN requests q ON q.id = r.request_id
        WHERE search_index MATCH :expression
        ORDER BY hits.score, hits.id DESC
    """
    rows = [dict(row) for row in connection.execute(sa.text(sql), params).mappings()]
    # No rows: no match (then the other query costs nothing either), or every hit deleted.
    if not rows or rows[0]["hit_count"] != len(rows):
        return None
    for row in rows:
        del row["hit_count"]
    return rows


HEADLINE = "'StartSel=[, StopSel=], MinWords=8, MaxWords=16, MaxFragments=1, FragmentDelimiter=…'"


def _search_postgres(connection: sa.Connection, query: SearchQuery) -> list[dict[str, Any]]:
    """Plain text: every word must appear (plainto_tsquery); `syntax=fts`: web search syntax (quoted
    phrases, OR, -word), which reads any input rather than reject it. Relevance is ts_rank."""
    if query.syntax == "plain" and not _TOKEN.search(query.q):
        raise BadSearch("The search needs at least one word.")
    parse = "websearch_to_tsquery" if query.syntax == "fts" else "plainto_tsquery"
    params: dict[str, Any] = {"q": query.q, "limit": query.limit}
    clauses = ["s.document @@ query", *_filters(query, params)]
    order = "s.id DESC" if query.sort == "recent" else "score DESC, s.id DESC"
    score = "NULL::real" if query.sort == "recent" else "ts_rank(s.document, query)"
    # The headlines are made for the page only (the inner query sorts and limits the matches).
    sql = f"""
        WITH query AS (SELECT {parse}('simple', :q) AS query),
        hits AS (
            SELECT r.id AS id, r.response_id, q.request_id, q.session_id, q.model, q.provider, r.timestamp,
                   r.finish_reason, r.error, s.prompt, s.response, {score} AS score
            FROM query
            JOIN search_index s ON s.document @@ query
            JOIN responses r ON r.id = s.id
            JOIN requests q ON q.id = r.request_id
            WHERE {' AND '.join(clauses)}
            ORDER BY {order}
            LIMIT :limit
        )
        SELECT id, response_id, request_id, session_id, model, provider, timestamp, finish_reason, error,
               ts_headline('simple', prompt, query, {HEADLINE}) AS prompt_snippet,
               ts_headline('simple', response, query, {HEADLINE}) AS response_snippet, score
        FROM hits, query
        ORDER BY {order.replace("s.id", "id")}
    """
    return [dict(row) for row in connection.execute(sa.text(sql), params).mappings()]
