"""Reading one row of the legacy `request_logs` table (seed 002) whatever its exact columns.

The table is known only from the seeds' description, so columns are found by name (with the usual
aliases) from `PRAGMA table_info`; anything missing gets a sensible default, nothing is required but
the table itself. Bodies that are not JSON are kept exactly as stored.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from chatledger.completion import ChunkAccumulator, finish_reason_of, usage_of
from chatledger.sessions import first_user_text
from chatledger.sse import EventSplitter, iter_json_payloads

ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "log_id"),
    "request_id": ("request_id", "req_id", "uuid"),
    "timestamp": ("timestamp", "ts", "time", "logged_at", "created_at"),
    "created_at": ("created_at",),
    "method": ("method", "http_method"),
    "path": ("path", "endpoint", "url", "route"),
    "model": ("model", "model_name"),
    "request_body": ("request_body", "openai_request", "request", "body", "request_json"),
    "provider_request": ("qwen_request", "provider_request", "upstream_request"),
    "response_body": ("response_body", "openai_response", "response", "response_json"),
    "provider_response": ("qwen_response", "provider_response", "upstream_response"),
    "status_code": ("status_code", "status", "http_status"),
    "duration_ms": ("duration_ms", "duration", "latency_ms", "response_time_ms", "response_time"),
    "prompt_tokens": ("prompt_tokens", "input_tokens"),
    "completion_tokens": ("completion_tokens", "output_tokens"),
    "total_tokens": ("total_tokens", "tokens"),
    "error": ("error", "error_message"),
    "stream": ("stream", "is_stream", "streaming"),
    "provider": ("provider",),
}
# Request ids the legacy table lacks are derived from the row itself, the same on every run.
LEGACY_NAMESPACE = uuid.UUID("7d7a5a3e-2f4b-4a86-9a53-0b1c6c3f1e01")
SECONDS_UPPER_BOUND = 100_000_000_000  # as seconds that is the year 5138; as milliseconds, 1973


def map_columns(columns: list[str]) -> dict[str, str]:
    """Our field -> the legacy column holding it; each legacy column is used once."""
    by_lower = {name.lower(): name for name in columns}
    found: dict[str, str] = {}
    used: set[str] = set()
    for target, names in ALIASES.items():
        for name in names:
            column = by_lower.get(name)
            if column is not None and column not in used:
                found[target] = column
                used.add(column)
                break
    return found


def text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def to_ms(value: Any) -> int | None:
    """Legacy times were seconds; milliseconds, float seconds and SQLite's `CURRENT_TIMESTAMP` text
    are recognized too."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return int(moment.timestamp() * 1000)
    if not isinstance(value, int | float):
        return None
    if abs(value) >= SECONDS_UPPER_BOUND:
        return int(value)
    return int(value) * 1000 if isinstance(value, int) else round(value * 1000)


def to_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def synthesize_stream(text: str) -> dict[str, Any] | None:
    """A streamed answer logged as its SSE text, folded into one completion (as the gateway records it)."""
    splitter = EventSplitter()
    events = splitter.feed(text.encode())
    events.append(splitter.rest())
    accumulator = ChunkAccumulator()
    payloads = 0
    for payload in iter_json_payloads(events):
        accumulator.add(payload)
        payloads += 1
    return accumulator.result() if payloads else None


def endpoint_of(path: str) -> str:
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return "completions"
    return "chat"


@dataclass(slots=True)
class LegacyExchange:
    legacy_id: Any
    request_id: str
    timestamp: int
    created_at: int
    method: str
    path: str
    openai_request: str
    provider_request: str | None
    model: str
    provider: str | None
    stream: bool
    first_text: str
    request_parsed: bool
    openai_response: str | None
    provider_response: str | None
    upstream_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    finish_reason: str | None
    error: str | None
    status_code: int | None
    duration_ms: int | None


def convert(row: dict[str, Any], rowid: int) -> LegacyExchange:
    """One legacy row, keyed by our field names (see `map_columns`), as a request and its response."""
    legacy_id = row.get("id") if row.get("id") is not None else rowid
    raw_request = text_of(row.get("request_body"))
    body = parse_json(raw_request)
    request = body if isinstance(body, dict) else {}
    timestamp = to_ms(row.get("timestamp"))
    timestamp = timestamp if timestamp is not None else to_ms(row.get("created_at")) or 0
    created_at = to_ms(row.get("created_at")) or timestamp
    path = text_of(row.get("path")) or "/v1/chat/completions"
    request_id = text_of(row.get("request_id")) or "legacy-" + str(uuid.uuid5(
        LEGACY_NAMESPACE, f"{legacy_id}\x00{row.get('timestamp')}\x00{raw_request}"))
    model = text_of(row.get("model")) or (request.get("model") if isinstance(request.get("model"), str) else None)
    stream = row.get("stream")
    response_text = text_of(row.get("response_body"))
    openai_response, provider_response = response_text, text_of(row.get("provider_response"))
    answer = parse_json(response_text)
    if answer is None and response_text and response_text.lstrip().startswith("data:"):
        answer = synthesize_stream(response_text)
        if answer is not None:  # keep the stream as logged next to the completion rebuilt from it
            openai_response, provider_response = orjson.dumps(answer).decode(), provider_response or response_text
    answer = answer if isinstance(answer, dict) else {}
    prompt, completion, total = usage_of(answer)
    status = to_int(row.get("status_code"))
    error = text_of(row.get("error"))
    if not error and isinstance(answer.get("error"), dict | str):
        error = text_of(answer["error"].get("message") if isinstance(answer["error"], dict) else answer["error"])
    if not error and status is not None and status >= 400:
        error = f"HTTP {status}"
    return LegacyExchange(
        legacy_id=legacy_id, request_id=request_id, timestamp=timestamp, created_at=created_at,
        method=text_of(row.get("method")) or "POST", path=path,
        openai_request=raw_request if raw_request is not None else "{}",
        provider_request=text_of(row.get("provider_request")), model=model or "unknown",
        provider=text_of(row.get("provider")),
        stream=bool(to_int(stream)) if stream is not None else bool(request.get("stream")),
        first_text=first_user_text(request, endpoint_of(path)),
        request_parsed=raw_request is None or isinstance(body, dict),
        openai_response=openai_response, provider_response=provider_response,
        upstream_id=answer.get("id") if isinstance(answer.get("id"), str) else None,
        prompt_tokens=_first(to_int(row.get("prompt_tokens")), prompt),
        completion_tokens=_first(to_int(row.get("completion_tokens")), completion),
        total_tokens=_first(to_int(row.get("total_tokens")), total),
        finish_reason="error" if error else finish_reason_of(answer),
        error=error, status_code=status, duration_ms=to_int(row.get("duration_ms")))


def response_id_for(request_id: str) -> str:
    return "legacy-response-" + str(uuid.uuid5(LEGACY_NAMESPACE, request_id))


def _first(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)
