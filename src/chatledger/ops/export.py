"""Reading exchanges back out: one session as a document, or every exchange as a stream of records.

Exchanges are read in keyset-paginated chunks, each its own short read transaction, so an export of a
large store neither holds it in memory nor pins the WAL against checkpoints while it runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from chatledger.ops.errors import NotFound
from chatledger.ops.sqlite import open_store, translated

JSON_COLUMNS = {"openai_request", "provider_request", "openai_response", "provider_response"}
CHUNK_ROWS = 500


def json_or_text(value: str | None) -> Any:
    """A stored body as JSON when it is JSON, else its text as stored."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def stored_columns(connection: sqlite3.Connection, table: str) -> str:
    """The table's stored columns as they are on disk (not the computed `qwen_*` aliases)."""
    return ", ".join(f'"{row[1]}"' for row in connection.execute(f"PRAGMA table_info({table})"))


def _document(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    for name in JSON_COLUMNS.intersection(item):
        item[name] = json_or_text(item[name])
    if "stream" in item:
        item["stream"] = bool(item["stream"])
    return item


SESSION_STATS = """
SELECT COUNT(*) AS response_count, SUM(error IS NOT NULL) AS error_count,
       COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
       COALESCE(SUM(total_tokens), 0) AS total_tokens, AVG(duration_ms) AS avg_duration_ms
FROM responses WHERE session_id = ?
"""


def export_session(path: Path, session_id: str, *, busy_timeout_ms: int = 5000) -> dict[str, Any]:
    """What seed 000's export-session script gathers: the session, its requests, responses and stats."""
    connection = open_store(path, busy_timeout_ms=busy_timeout_ms, readonly=True)
    try:
        with translated(path):
            connection.execute("BEGIN")
            session = connection.execute(f"SELECT {stored_columns(connection, 'sessions')} FROM sessions "
                                         "WHERE id = ?", (session_id,)).fetchone()
            if session is None:
                raise NotFound(f"no session {session_id!r} in {path}")
            requests = [_document(row) for row in connection.execute(
                f"SELECT {stored_columns(connection, 'requests')} FROM requests WHERE session_id = ? ORDER BY id",
                (session_id,))]
            responses = [_document(row) for row in connection.execute(
                f"SELECT {stored_columns(connection, 'responses')} FROM responses WHERE session_id = ? ORDER BY id",
                (session_id,))]
            totals = dict(connection.execute(SESSION_STATS, (session_id,)).fetchone())
            connection.execute("COMMIT")
    finally:
        connection.close()
    average = totals["avg_duration_ms"]
    stats = {"session_id": session_id, "request_count": len(requests), **totals,
             "error_count": totals["error_count"] or 0,
             "avg_duration_ms": round(average, 1) if average is not None else None,
             "first_request_at": requests[0]["timestamp"] if requests else None,
             "last_request_at": requests[-1]["timestamp"] if requests else None}
    return {"session": _document(session), "requests": requests, "responses": responses,
            "stats": stats}


@dataclass(frozen=True)
class ExchangeFilter:
    start_ms: int | None = None
    end_ms: int | None = None  # exclusive
    model: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if self.start_ms is not None:
            clauses.append("timestamp >= ?")
            params.append(self.start_ms)
        if self.end_ms is not None:
            clauses.append("timestamp < ?")
            params.append(self.end_ms)
        if self.model is not None:
            clauses.append("model = ?")
            params.append(self.model)
        return "".join(f" AND {clause}" for clause in clauses), params


def count_exchanges(path: Path, selection: ExchangeFilter, *, busy_timeout_ms: int = 5000) -> int:
    connection = open_store(path, busy_timeout_ms=busy_timeout_ms, readonly=True)
    try:
        with translated(path):
            where, params = selection.where()
            return connection.execute(f"SELECT COUNT(*) FROM requests WHERE 1 = 1{where}", params).fetchone()[0]
    finally:
        connection.close()


EXCHANGE_REQUEST = ("id", "request_id", "session_id", "timestamp", "method", "path", "model", "provider",
                    "upstream_model", "stream", "api_key_hash", "openai_request")
EXCHANGE_RESPONSE = ("request_id", "response_id", "timestamp AS response_timestamp", "status_code",
                     "finish_reason", "error", "prompt_tokens", "completion_tokens", "total_tokens",
                     "duration_ms", "ttft_ms", "cost", "openai_response")


def iter_exchanges(path: Path, selection: ExchangeFilter, *, busy_timeout_ms: int = 5000,
                   chunk_rows: int = CHUNK_ROWS) -> Iterator[dict[str, Any]]:
    """Every selected exchange, oldest first: {"request", "response", "metadata"}."""
    connection = open_store(path, busy_timeout_ms=busy_timeout_ms, readonly=True)
    where, params = selection.where()
    last_id = 0
    try:
        with translated(path):
            stored = {row[1] for row in connection.execute("PRAGMA table_info(responses)")}
        # Columns a store at an older revision lacks (`cost`) are left out.
        response_columns = [name for name in EXCHANGE_RESPONSE if name.split(" ")[0] in stored]
        while True:
            with translated(path):
                requests = connection.execute(
                    f"SELECT {', '.join(EXCHANGE_REQUEST)} FROM requests WHERE id > ?{where} ORDER BY id LIMIT ?",
                    [last_id, *params, chunk_rows]).fetchall()
                if not requests:
                    return
                ids = [row["id"] for row in requests]
                answers: dict[int, list[sqlite3.Row]] = {}
                for row in connection.execute(
                        f"SELECT {', '.join(response_columns)} FROM responses "
                        f"WHERE request_id IN ({', '.join('?' * len(ids))}) ORDER BY id", ids):
                    answers.setdefault(row["request_id"], []).append(row)
            for request in requests:
                for response in answers.get(request["id"]) or [None]:
                    yield exchange(request, response)
            last_id = ids[-1]
    finally:
        connection.close()


def exchange(request: sqlite3.Row, response: sqlite3.Row | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {name: request[name] for name in EXCHANGE_REQUEST[1:-1]}
    metadata["stream"] = bool(metadata["stream"])
    if response is not None:
        metadata.update({name: response[name] for name in response.keys()[1:-1]})
    return {"request": json_or_text(request["openai_request"]),
            "response": json_or_text(response["openai_response"]) if response is not None else None,
            "metadata": metadata}


UNFINISHED = {"error", "client_disconnected"}
REPLY_FIELDS = ("content", "tool_calls", "function_call", "name")


def finetune_example(item: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's chat fine-tuning line ({"messages": [..., reply]}, plus the request's tools), or None when
    the exchange is not a successful chat completion."""
    metadata, request, response = item["metadata"], item["request"], item["response"]
    if not str(metadata.get("path", "")).endswith("/chat/completions") or metadata.get("error"):
        return None
    if (metadata.get("status_code") or 200) >= 400:
        return None
    if not isinstance(request, dict) or not isinstance(response, dict):
        return None
    messages, choices = request.get("messages"), response.get("choices")
    if not isinstance(messages, list) or not messages or not isinstance(choices, list) or not choices:
        return None
    choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), choices[0])
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or choice.get("finish_reason") in UNFINISHED:
        return None
    reply: dict[str, Any] = {"role": "assistant"}
    reply.update({name: message[name] for name in REPLY_FIELDS if message.get(name) not in (None, [])})
    if "content" not in reply and "tool_calls" not in reply and "function_call" not in reply:
        return None
    example: dict[str, Any] = {"messages": [*messages, reply]}
    for name in ("tools", "parallel_tool_calls", "functions"):
        if request.get(name) is not None:
            example[name] = request[name]
    return example
