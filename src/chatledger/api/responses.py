"""/v1/responses: what came back, with its usage and timings, and totals over them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from chatledger.api.deps import FiltersDep, IncludeBodies, ListPage, PageDep, ReaderDep, list_body
from chatledger.errors import NotFound

router = APIRouter(tags=["responses"])


class ResponseRecord(BaseModel):
    id: int
    response_id: str = Field(description="The gateway's UUID for this answer.")
    request_id: int = Field(description="The integer `id` of the request answered.")
    session_id: str
    timestamp: int = Field(description="ms since the epoch, as every timestamp here.")
    duration_ms: int | None
    ttft_ms: int | None = Field(description="Time to the first token, for streams.")
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    finish_reason: str | None
    error: str | None
    status_code: int | None
    parent_id: str | None = Field(description="The session's previous answer, which this one continues.")
    upstream_id: str | None
    created_at: int
    openai_response: str | None = Field(None, description="The answer as the client got it: a JSON string "
                                                          "(for streams, the completion they add up to).")
    provider_response: str | None = Field(None, description="The provider's own answer, when it differs.")
    qwen_response: str | None = Field(None, description="The provider's answer: a JSON string.")


class Statistics(BaseModel):
    total_responses: int
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    avg_duration_ms: int
    avg_ttft_ms: int
    error_count: int
    streaming_responses: int
    first_timestamp: int | None
    last_timestamp: int | None
    total_cost: float | None = Field(None, description="USD, where prices are known (see /v1/usage).")


class StatsBody(BaseModel):
    statistics: Statistics


def _not_found(what: str) -> NotFound:
    return NotFound(f"No response {what}.", code="response_not_found", param="id")


@router.get("/v1/responses", response_model=ListPage[ResponseRecord], response_model_exclude_unset=True,
            summary="List responses, newest first",
            description="Without `include_bodies=true` the items leave out `openai_response`, "
                        "`provider_response` and `qwen_response`. `sort=duration&order=desc` lists the "
                        "slowest first (leaving out any row without a duration; the gateway records one "
                        "for every response).")
def list_responses(reader: ReaderDep, page: PageDep, filters: FiltersDep,
                   include_bodies: IncludeBodies = False) -> dict[str, Any]:
    return list_body(reader.list_responses(filters, page, include_bodies=include_bodies), page)


# Declared before /v1/responses/{response_id}, which would otherwise take "stats" for an id.
@router.get("/v1/responses/stats", response_model=StatsBody, summary="Usage totals",
            description="Over every response matching the filters (all of them by default).")
def response_stats(reader: ReaderDep, filters: FiltersDep) -> dict[str, Any]:
    return {"statistics": reader.response_stats(filters)}


@router.get("/v1/responses/{response_id}", response_model=ResponseRecord, summary="Get a response with its bodies",
            description="The integer `id` or the UUID `response_id`. `openai_response` and `qwen_response` "
                        "are JSON strings.")
def get_response(reader: ReaderDep, response_id: str) -> dict[str, Any]:
    response = reader.get_response(response_id)
    if response is None:
        raise _not_found(repr(response_id))
    return response


@router.get("/v1/requests/{request_id}/response", response_model=ResponseRecord, tags=["requests"],
            summary="Get the response to a request",
            description="The integer `id` or the UUID `request_id` of the request.")
def response_of_request(reader: ReaderDep, request_id: str) -> dict[str, Any]:
    found, response = reader.response_of_request(request_id)
    if not found:
        raise NotFound(f"No request {request_id!r}.", code="request_not_found", param="id")
    if response is None:
        raise _not_found(f"recorded yet for request {request_id!r}")
    return response
