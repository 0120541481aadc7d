"""What every route of the query API shares: the reader, the access check, paging and filter parameters."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from chatledger.errors import InvalidRequest
from chatledger.gateway.access import check_admin
from chatledger.store.reader import Filters, Order, Page, PageRequest, Reader, Sort

MAX_LIMIT = 1000
T = TypeVar("T")

# The dependencies are `async` because none of them blocks: FastAPI would run a plain `def` in its
# threadpool. The routes, which read the store, are plain `def` for exactly that reason.

# Declared for the OpenAPI document (the "Authorize" button in /docs); the check itself is check_admin.
bearer = HTTPBearer(auto_error=False, description="The gateway's CHATLEDGER_MASTER_KEY, when it has one.")


async def require_admin(request: Request,
                  _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
    master_key = request.app.state.gateway.master_key
    check_admin(master_key, request.headers.get("authorization"), request.client.host if request.client else None)


async def settle_recorder(request: Request) -> None:
    """Answers leave before their rows are committed (the journal holds them meanwhile): before it
    reads, the query API waits the millisecond or so until what was answered so far is in the store."""
    gateway = request.app.state.gateway
    if gateway.writer is not None:
        await gateway.writer.settled(gateway.proxy.ack_timeout)


async def get_reader(request: Request) -> Reader:
    return request.app.state.reader


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page (1-1000).")] = 50,
    offset: Annotated[int, Query(ge=0, description="Rows to skip; use `cursor` instead deep into a list.")] = 0,
    cursor: Annotated[str | None, Query(
        description="The `next_cursor` of the previous page (same `sort` and `order`). With a cursor, "
                    "`total` is the count taken when the first page was read.")] = None,
    sort: Annotated[Sort, Query(description="`time` (when it was recorded) or `duration`.")] = "time",
    order: Annotated[Order, Query(description="`desc` (newest or slowest first) or `asc`.")] = "desc",
) -> PageRequest:
    if cursor is not None and offset:
        raise InvalidRequest("Pass either `offset` or `cursor`, not both.", param="offset", code="invalid_parameter")
    return PageRequest(limit, offset, cursor, sort, order)


async def session_filter_params(
    model: Annotated[str | None, Query(description="Only what involved this (client-facing) model.")] = None,
    provider: Annotated[str | None, Query(description="Only what was routed to this provider.")] = None,
    api_key_hash: Annotated[str | None, Query(description="Only what this caller's key fingerprint sent.")] = None,
    status: Annotated[Literal["ok", "error"] | None, Query(
        description="`error`: answered with an error; `ok`: answered without one.")] = None,
    since: Annotated[int | None, Query(alias="from", description="ms since the epoch, inclusive.")] = None,
    until: Annotated[int | None, Query(alias="to", description="ms since the epoch, exclusive.")] = None,
) -> Filters:
    return Filters(model=model, provider=provider, api_key_hash=api_key_hash, status=status, since=since,
                   until=until)


async def filter_params(
    common: Annotated[Filters, Depends(session_filter_params)],
    session_id: Annotated[str | None, Query(description="Only this session's.")] = None,
) -> Filters:
    return replace(common, session_id=session_id)


ReaderDep = Annotated[Reader, Depends(get_reader)]
PageDep = Annotated[PageRequest, Depends(page_params)]
FiltersDep = Annotated[Filters, Depends(filter_params)]
SessionFiltersDep = Annotated[Filters, Depends(session_filter_params)]
IncludeBodies = Annotated[bool, Query(
    description="Lists leave out the stored bodies (they can be large); `true` includes them as in the "
                "detail endpoint. The detail endpoints always include them.")]


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    total: int = Field(description="Rows matching the filters.")
    limit: int
    offset: int
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


def list_body(page: Page, params: PageRequest) -> dict[str, Any]:
    return {"object": "list", "data": page.rows, "total": page.total, "limit": params.limit,
            "offset": params.offset, "has_more": page.has_more, "next_cursor": page.next_cursor}
