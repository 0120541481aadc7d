"""A fake Anthropic Messages API (JSON and SSE) and model list, strict about what it accepts.

Deterministic. The answer is "Echo: <last user text>"; with tools offered (tool_choice not "none")
and the last turn not carrying tool results, it says "Calling <tools>." and calls the chosen tool, or
(unless parallel use is disabled) each of the first two tools, with the last user text as the first
argument; after tool results it says "The tool said: <results>". With `thinking` enabled it starts
with a thinking block. The prompt's system part is reported as read from cache. Model names steer
failures: "error-NNN" answers HTTP NNN with Anthropic's error body, "error-midstream" breaks a stream
with an `error` event, "slow" first waits `app[SLOW_SECONDS]`. Each request is appended to
`app[REQUESTS]` as {"path", "headers", "body"}; requests the real API would refuse get a 400.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
from aiohttp import web

REQUESTS = web.AppKey("requests", list)
SLOW_SECONDS = web.AppKey("slow_seconds", float)

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}
BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token a word."""
    return len(text.split())


def digest(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": "req_fake"}


def blocks_of(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def _block_problem(block: Any) -> str | None:
    if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
        return f"invalid content block: {block!r}"
    kind = block["type"]
    if kind == "text" and not block.get("text"):
        return "text content blocks must be non-empty"
    if kind in ("image", "document"):
        source = block.get("source") or {}
        if source.get("type") == "base64" and not (source.get("media_type") and source.get("data")):
            return "base64 sources need media_type and data"
        if source.get("type") not in ("base64", "url") or (source.get("type") == "url" and not source.get("url")):
            return "invalid source"
    if kind == "tool_use" and not (block.get("id") and block.get("name") and isinstance(block.get("input"), dict)):
        return "tool_use blocks need id, name and an input object"
    return None


def _turn_problem(turn: Any, previous: dict[str, Any] | None) -> str | None:
    if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
        return "messages: roles must be user or assistant"
    if previous is None and turn["role"] != "user":
        return "messages: first message must use the user role"
    if previous is not None and previous["role"] == turn["role"]:
        return "messages: roles must alternate between user and assistant"
    content = turn.get("content")
    if not isinstance(content, str | list) or not content:
        return "messages: content must be a non-empty string or list"
    blocks = blocks_of(content)
    for block in blocks:
        problem = _block_problem(block)
        if problem:
            return problem
    wanted = {b["id"] for b in blocks_of(previous["content"]) if b["type"] == "tool_use"} if previous else set()
    results = [b for b in blocks if b["type"] == "tool_result"]
    if turn["role"] == "user" and {b.get("tool_use_id") for b in results} != wanted:
        return "tool_use ids were found without tool_result blocks immediately after (or the reverse)"
    if results and blocks[: len(results)] != results:
        return "tool_result blocks must come first in the user message"
    return None


def problem_of(body: Any) -> str | None:
    """Why the real API would refuse this request, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous = None
    for turn in messages:
        problem = _turn_problem(turn, previous)
        if problem:
            return problem
        previous = turn
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: must be a string or a list of text blocks"
    for tool in body.get("tools") or []:
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            return "tools: each tool needs name and input_schema"
    if "tool_choice" in body and body["tool_choice"].get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice: invalid type"
    return None


def _tool_uses(body: dict[str, Any], last_user: str, key: str) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice["type"] == "tool":
        tools = [t for t in tools if t["name"] == choice["name"]]
    elif choice.get("disable_parallel_tool_use"):
        tools = tools[:1]
    uses = []
    for position, tool in enumerate(tools[:2]):
        argument = next(iter(tool["input_schema"].get("properties") or {"input": None}))
        uses.append({"type": "tool_use", "id": f"toolu_{key[:20]}{position}", "name": tool["name"],
                     "input": {argument: last_user}})
    return uses


def plan(body: dict[str, Any]) -> dict[str, Any]:
    """The fake's answer as an Anthropic message (the non-streaming body)."""
    messages = body["messages"]
    last = blocks_of(messages[-1]["content"])
    results = [b for b in last if b["type"] == "tool_result"]
    last_user = next((text_of(m["content"]) for m in reversed(messages) if m["role"] == "user"
                      and text_of(m["content"])), "")
    key = digest(body)
    content: list[dict[str, Any]] = []
    if (body.get("thinking") or {}).get("type") == "enabled":
        content.append({"type": "thinking", "thinking": f"Thinking about: {last_user}",
                        "signature": "sig_" + key[:16]})
    uses = [] if results or (body.get("tool_choice") or {}).get("type") == "none" or not body.get("tools") \
        else _tool_uses(body, last_user, key)
    if uses:
        text = "Calling " + " and ".join(u["name"] for u in uses) + "."
    elif results:
        text = "The tool said: " + "; ".join(text_of(r.get("content", "")) for r in results)
    else:
        text = "Echo: " + last_user
    stop_reason, stop_sequence = ("tool_use" if uses else "end_turn"), None
    for sequence in body.get("stop_sequences") or []:
        if sequence in text:
            text, stop_reason, stop_sequence = text[: text.index(sequence)], "stop_sequence", sequence
            uses = []
    words = text.split(" ")
    if len(words) > body["max_tokens"]:
        text, stop_reason, uses = " ".join(words[: body["max_tokens"]]), "max_tokens", []
    if text:
        content.append({"type": "text", "text": text})
    content += uses
    system = body.get("system") or ""
    cached = count_tokens(system if isinstance(system, str) else text_of(system))
    prompt = sum(count_tokens(text_of(m["content"])) + 4 for m in messages)
    output = sum(count_tokens(b.get("text") or b.get("thinking") or orjson.dumps(b.get("input")).decode())
                 for b in content)
    return {"id": "msg_" + key[:24], "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": cached, "output_tokens": output}}


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def stream_events(message: dict[str, Any]) -> list[bytes]:
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events = [sse("message_start", {"type": "message_start", "message": start}), sse("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": ""},
                 "tool_use": {**block, "input": {}}}[kind]
        events.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                  "content_block": empty}))
        if kind == "tool_use":
            arguments = orjson.dumps(block["input"]).decode()
            half = len(arguments) // 2
            deltas = [{"type": "input_json_delta", "partial_json": part}
                      for part in ("", arguments[:half], arguments[half:])]
        elif kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        events += [sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                   for d in deltas]
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(sse("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": message["stop_reason"],
                                                  "stop_sequence": message["stop_sequence"]},
                                        "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def _refuse(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(error_body(status, message)),
                        content_type="application/json", headers={"request-id": "req_fake"})


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        body = None
    request.app[REQUESTS].append({"path": request.path, "headers": dict(request.headers), "body": body})
    if not request.headers.get("x-api-key"):
        return _refuse(401, "x-api-key header is required")
    if not request.headers.get("anthropic-version"):
        return _refuse(400, "anthropic-version: header is required")
    problem = problem_of(body)
    if problem:
        return _refuse(400, problem)
    model = body["model"]
    if model.startswith("error-") and model[6:].isdigit():
        return _refuse(int(model[6:]), f"Fake failure {model}")
    if model == "slow":
        await asyncio.sleep(request.app[SLOW_SECONDS])
    message = plan(body)
    headers = {"request-id": "req_" + message["id"][4:], "anthropic-ratelimit-requests-remaining": "99"}
    if not body.get("stream"):
        return web.Response(body=orjson.dumps(message), content_type="application/json", headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for position, event in enumerate(stream_events(message)):
        if model == "error-midstream" and position == 4:
            await response.write(sse("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                          "message": "Overloaded"}}))
            break
        await response.write(event)
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    request.app[REQUESTS].append({"path": request.path, "headers": dict(request.headers), "body": None})
    if not request.headers.get("x-api-key"):
        return _refuse(401, "x-api-key header is required")
    return web.json_response({"data": [{"type": "model", "id": "claude-sonnet-4-20250514",
                                        "display_name": "Claude Sonnet 4", "created_at": "2025-05-22T00:00:00Z"}],
                              "has_more": False, "first_id": "claude-sonnet-4-20250514",
                              "last_id": "claude-sonnet-4-20250514"})


def make_app(slow_seconds: float = 1.0) -> web.Application:
    app = web.Application()
    app[REQUESTS] = []
    app[SLOW_SECONDS] = slow_seconds
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    return app
