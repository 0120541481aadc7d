"""/v1/sessions: conversations as the recorder grouped them, their usage, and deleting them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from chatledger.api.deps import ListPage, PageDep, ReaderDep, SessionFiltersDep, list_body
from chatledger.errors import NotFound

router = APIRouter(tags=["sessions"])


class Session(BaseModel):
    id: str
    chat_id: str | None
    parent_id: str | None = Field(description="The response the next turn continues from.")
    first_user_message: str | None
    api_key_hash: str | None
    message_count: int
    created_at: int = Field(description="ms since the epoch, as every timestamp here.")
    updated_at: int
    expires_at: int


class SessionStats(BaseModel):
    session_id: str
    request_count: int
    response_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_duration_ms: int
    error_count: int
    first_timestamp: int | None = Field(description="The session's first request.")
    last_timestamp: int | None = Field(description="Its latest request or response.")


class Deleted(BaseModel):
    id: str
    deleted: Literal[True] = True


def session_not_found(session_id: str) -> NotFound:
    return NotFound(f"No session {session_id!r}.", code="session_not_found", param="id")


@router.get("/v1/sessions", response_model=ListPage[Session], summary="List sessions, newest first",
            description="`sort=time` orders by `created_at`; `sort=duration` by the time from the first to "
                        "the latest message. `model`, `provider` and `status` keep sessions with at least "
                        "one matching request or response; `from`/`to` apply to `created_at`.")
def list_sessions(reader: ReaderDep, page: PageDep, filters: SessionFiltersDep) -> dict[str, Any]:
    return list_body(reader.list_sessions(filters, page), page)


@router.get("/v1/sessions/{session_id}", response_model=Session, summary="Get a session")
def get_session(reader: ReaderDep, session_id: str) -> dict[str, Any]:
    session = reader.get_session(session_id)
    if session is None:
        raise session_not_found(session_id)
    return session


@router.get("/v1/sessions/{session_id}/stats", response_model=SessionStats, summary="Token usage of a session")
def session_stats(reader: ReaderDep, session_id: str) -> dict[str, Any]:
    stats = reader.session_stats(session_id)
    if stats is None:
        raise session_not_found(session_id)
    return stats


@router.delete("/v1/sessions/{session_id}", response_model=Deleted,
               summary="Delete a session with its requests and responses")
def delete_session(request: Request, reader: ReaderDep, session_id: str) -> dict[str, Any]:
    gone = reader.delete_session(session_id)
    if gone is None:
        raise session_not_found(session_id)
    request.app.state.gateway.forget_from_search(gone)  # searches join the ledger: they show none already
    return {"id": session_id, "deleted": True}
