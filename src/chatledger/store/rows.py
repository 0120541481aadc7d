"""Turning records into row values: the part of writing that is the same for every database."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from chatledger.completion import ChunkAccumulator, finish_reason_of, usage_of
from chatledger.sse import iter_json_payloads
from chatledger.store.records import ResponseRecord


@dataclass(slots=True)
class ResponseFields:
    openai_response: str | None
    provider_response: str | None
    upstream_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    finish_reason: str | None
    error: str | None


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _error_message(payload: object) -> str | None:
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return None


def response_fields(record: ResponseRecord) -> ResponseFields:
    if record.stream_events is not None:
        return _streamed_fields(record)
    payload: object = None
    if record.openai_response:
        try:
            payload = orjson.loads(record.openai_response)
        except orjson.JSONDecodeError:
            payload = None
    fields = ResponseFields(text(record.openai_response), text(record.provider_response),
                            None, None, None, None, None, record.error)
    if isinstance(payload, dict):
        fields.prompt_tokens, fields.completion_tokens, fields.total_tokens = usage_of(payload)
        fields.upstream_id = payload.get("id") if isinstance(payload.get("id"), str) else None
        fields.finish_reason = finish_reason_of(payload)
    if record.status_code >= 400:
        fields.error = fields.error or _error_message(payload) or f"HTTP {record.status_code}"
    if fields.error:
        fields.finish_reason = "error"
    return fields


def _streamed_fields(record: ResponseRecord) -> ResponseFields:
    accumulator = ChunkAccumulator()
    for payload in iter_json_payloads(record.stream_events or []):
        accumulator.add(payload)
    completion = accumulator.result(cut=record.cut)
    prompt, completion_tokens, total = usage_of(completion)
    error = record.error or _error_message({"error": accumulator.error}) if accumulator.error else record.error
    finish = finish_reason_of(completion)
    if error and not record.cut:
        finish = "error"
    return ResponseFields(orjson.dumps(completion).decode(), text(record.provider_response), accumulator.id,
                          prompt, completion_tokens, total, finish, error)
