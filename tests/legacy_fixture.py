"""A legacy database as seed 002 found it: one `request_logs` table (times in seconds), plus `settings`.

The exact legacy schema is not in the seeds; this one follows their description (request id, seconds,
method, path, model, the OpenAI request and response bodies, status, duration, usage, error, stream).
Rows are deterministic and cover the awkward cases: GET /v1/models, upstream errors, bodies that are
not JSON, streamed answers logged as SSE, tool calls, missing and repeated request ids.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

BASE_SECONDS = 1_761_869_496
SECONDS_APART = 3
TOPICS = 50

LEGACY_SCHEMA = """
CREATE TABLE request_logs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  request_id TEXT,
  timestamp INTEGER NOT NULL,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  model TEXT,
  request_body TEXT,
  response_body TEXT,
  status_code INTEGER,
  duration_ms INTEGER,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  total_tokens INTEGER,
  error TEXT,
  stream INTEGER DEFAULT 0
);
CREATE INDEX idx_request_logs_timestamp ON request_logs(timestamp);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT, updated_at INTEGER);
INSERT INTO settings VALUES ('schema_version', '1', 1761869496);
"""

MINIMAL_SCHEMA = """
CREATE TABLE request_logs (id INTEGER PRIMARY KEY, timestamp INTEGER, request_body TEXT, response_body TEXT);
"""


def seconds_of(index: int) -> int:
    return BASE_SECONDS + index * SECONDS_APART


def request_id_of(index: int) -> str | None:
    """Every 97th row has no request id; every 1000th repeats the previous row's."""
    if index % 97 == 96:
        return None
    if index % 1000 == 999:
        return f"legacy-req-{index - 1}"
    return f"legacy-req-{index}"


def question_of(index: int) -> str:
    return f"Question number {index % TOPICS}?"


def _completion(index: int, message: dict, prompt: int, completion: int) -> str:
    return json.dumps({"id": f"chatcmpl-{index}", "object": "chat.completion", "created": seconds_of(index),
                       "model": "qwen-turbo", "choices": [{"index": 0, "message": message, "finish_reason":
                                                           "tool_calls" if "tool_calls" in message else "stop"}],
                       "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}})


def legacy_row(index: int) -> tuple:
    """(request_id, timestamp, method, path, model, request_body, response_body, status_code, duration_ms,
    prompt_tokens, completion_tokens, total_tokens, error, stream)"""
    seconds = seconds_of(index)
    kind = index % 20
    if kind == 0:
        models = json.dumps({"object": "list", "data": [{"id": "qwen-turbo", "object": "model"}]})
        return (request_id_of(index), seconds, "GET", "/v1/models", None, None, models, 200, 5,
                None, None, None, None, 0)
    request = {"model": "qwen-turbo", "messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": question_of(index)}]}
    if kind == 1:
        error = {"error": {"message": "upstream failed", "type": "server_error"}}
        return (request_id_of(index), seconds, "POST", "/v1/chat/completions", "qwen-turbo", json.dumps(request),
                json.dumps(error), 500, 40, None, None, None, "upstream failed", 0)
    if kind == 2:
        return (request_id_of(index), seconds, "POST", "/v1/chat/completions", "qwen-turbo", "not json {",
                None, 400, 1, None, None, None, "invalid JSON body", 0)
    if kind == 3:
        chunks = [{"id": f"chatcmpl-{index}", "object": "chat.completion.chunk", "model": "qwen-turbo",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Streamed "}}]},
                  {"id": f"chatcmpl-{index}", "object": "chat.completion.chunk", "model": "qwen-turbo",
                   "choices": [{"index": 0, "delta": {"content": "answer."}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}]
        sse = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        return (request_id_of(index), seconds, "POST", "/v1/chat/completions", "qwen-turbo",
                json.dumps({**request, "stream": True}), sse, 200, 300, 12, 3, 15, None, 1)
    if kind == 4:
        call = {"id": f"call_{index}", "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"q": index})}}
        body = _completion(index, {"role": "assistant", "content": None, "tool_calls": [call]}, 20, 7)
        return (request_id_of(index), seconds, "POST", "/v1/chat/completions", "qwen-turbo", json.dumps(request),
                body, 200, 150, 20, 7, 27, None, 0)
    body = _completion(index, {"role": "assistant", "content": f"Answer {index}."}, 10 + kind, 5)
    return (request_id_of(index), seconds, "POST", "/v1/chat/completions", "qwen-turbo", json.dumps(request),
            body, 200, 100 + kind, 10 + kind, 5, 15 + kind, None, 0)


def make_legacy_db(path: Path, rows: int = 10_000) -> Path:
    connection = sqlite3.connect(path)
    connection.executescript(LEGACY_SCHEMA)
    connection.executemany(
        "INSERT INTO request_logs (request_id, timestamp, method, path, model, request_body, response_body, "
        "status_code, duration_ms, prompt_tokens, completion_tokens, total_tokens, error, stream) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (legacy_row(index) for index in range(rows)))
    connection.commit()
    connection.close()
    return path


def make_minimal_legacy_db(path: Path, rows: int = 10) -> Path:
    """The fewest columns an importer should cope with: id, seconds and the two bodies."""
    connection = sqlite3.connect(path)
    connection.executescript(MINIMAL_SCHEMA)
    connection.executemany("INSERT INTO request_logs VALUES (?, ?, ?, ?)",
                           [(index + 1, seconds_of(index), legacy_row(index + 5)[5], legacy_row(index + 5)[6])
                            for index in range(rows)])
    connection.commit()
    connection.close()
    return path
