"""/v1/search: full-text search over prompts and answers, with snippets and the list filters."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from chatledger.errors import InvalidRequest
from chatledger.store.search import BadSearch, SearchQuery, search

router = APIRouter(tags=["search"])


@router.get("/v1/search", summary="Search prompts and answers",
            description="`q` is plain text by default: every word must appear. `syntax=fts` takes an SQLite "
                        "FTS5 query instead (phrases in quotes, OR, NOT, prefix*). `sort=recent` (default) "
                        "lists the newest matches first (`score` null); `relevance` ranks them by bm25 and "
                        "gives each its `score`. Snippets mark the matches in [brackets]. The index follows "
                        "the recorder by about a second when the machine has time to spare.")
def search_exchanges(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    syntax: Literal["plain", "fts"] = "plain",
    sort: Literal["recent", "relevance"] = "recent",
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    model: str | None = None,
    provider: str | None = None,
    session_id: str | None = None,
    api_key_hash: str | None = None,
    since: Annotated[int | None, Query(alias="from", ge=0)] = None,
    until: Annotated[int | None, Query(alias="to", ge=0)] = None,
) -> dict[str, Any]:
    query = SearchQuery(q, syntax, sort, limit, model, provider, session_id, api_key_hash, since, until)
    try:
        with request.app.state.reader.engine.connect() as connection:
            rows = search(connection, query)
    except BadSearch as exc:
        raise InvalidRequest(str(exc), param="q", code="invalid_search") from exc
    return {"object": "list", "data": rows, "query": q}
