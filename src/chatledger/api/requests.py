"""/v1/requests: what callers sent, as they sent it and as the provider got it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from chatledger.api.deps import FiltersDep, IncludeBodies, ListPage, PageDep, ReaderDep, SessionFiltersDep, list_body
from chatledger.api.sessions import session_not_found
from chatledger.errors import NotFound

router = APIRouter(tags=["requests"])

REF = "The integer `id` or the UUID `request_id`."


class RequestRecord(BaseModel):
    id: int
    request_id: str = Field(description="The UUID also sent back as the x-chatledger-request-id header.")
    session_id: str
    timestamp: int = Field(description="ms since the epoch, as every timestamp here.")
    method: str
    path: str
    model: str
    provider: str | None
    upstream_model: str | None
    stream: bool
    api_key_hash: str | None
    created_at: int
    openai_request: str | None = Field(None, description="The request as the client sent it: a JSON string.")
    provider_request: str | None = Field(
        None, description="What the provider was sent, when it differs from `openai_request` (else null).")
    qwen_request: str | None = Field(None, description="What the provider was sent: a JSON string.")


@router.get("/v1/requests", response_model=ListPage[RequestRecord], response_model_exclude_unset=True,
            summary="List requests, newest first",
            description="Without `include_bodies=true` the items leave out `openai_request`, "
                        "`provider_request` and `qwen_request`. `sort=duration` orders by the response's "
                        "duration; `status` keeps requests whose response matches.")
def list_requests(reader: ReaderDep, page: PageDep, filters: FiltersDep,
                  include_bodies: IncludeBodies = False) -> dict[str, Any]:
    return list_body(reader.list_requests(filters, page, include_bodies=include_bodies), page)


@router.get("/v1/requests/{request_id}", response_model=RequestRecord, summary="Get a request with its bodies",
            description=f"{REF} `openai_request` and `qwen_request` are JSON strings "
                        "(`jq -r '.openai_request | fromjson'`).")
def get_request(reader: ReaderDep, request_id: str) -> dict[str, Any]:
    request = reader.get_request(request_id)
    if request is None:
        raise NotFound(f"No request {request_id!r}.", code="request_not_found", param="id")
    return request


@router.get("/v1/sessions/{session_id}/requests", response_model=ListPage[RequestRecord],
            response_model_exclude_unset=True, summary="List a session's requests",
            description="As `GET /v1/requests?session_id=...`, and 404 for an unknown session.")
def list_session_requests(reader: ReaderDep, session_id: str, page: PageDep, filters: SessionFiltersDep,
                          include_bodies: IncludeBodies = False) -> dict[str, Any]:
    if reader.get_session(session_id) is None:
        raise session_not_found(session_id)
    scoped = replace(filters, session_id=session_id)
    return list_body(reader.list_requests(scoped, page, include_bodies=include_bodies), page)
