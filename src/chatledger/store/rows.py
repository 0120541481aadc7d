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
    cached_tokens: int = 0


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
    """The columns of a response row."""
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
        fields.cached_tokens = cached_tokens_of(payload)
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
                          prompt, completion_tokens, total, finish, error, cached_tokens_of(completion))


def cached_tokens_of(payload: dict) -> int:
    usage = payload.get("usage")
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) else 0


def answer_text(payload: dict) -> str:
    """The text of an answer (contents, tool calls) as one string for the search index."""
    parts: list[str] = []
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or ():
            function = (call.get("function") or {}) if isinstance(call, dict) else {}
            parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(parts)


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p if isinstance(p, str) else str(p.get("text", ""))
                         for p in content if isinstance(p, str) or (isinstance(p, dict) and "text" in p))
    return ""


def prompt_text(body: dict, endpoint: str) -> str:
    """What the caller said this turn, for the search index: the messages since the last assistant
    message (not the whole history again, which an agent resends every turn), or the prompt/input."""
    if endpoint == "chat":
        messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
        start = 0
        for index, message in enumerate(messages):
            if message.get("role") == "assistant":
                start = index + 1
        if start == 0:  # the first turn: the system prompt belongs to it
            return "\n".join(_content_text(m.get("content")) for m in messages)
        return "\n".join(_content_text(m.get("content")) for m in messages[start:])
    value = body.get("prompt") if endpoint == "completions" else body.get("input")
    return value if isinstance(value, str) else _content_text(value) if isinstance(value, list) else ""
