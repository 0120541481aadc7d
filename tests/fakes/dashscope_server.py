"""A fake DashScope native API: text and multimodal generation (JSON and SSE), embeddings, models.

Deterministic. The answer is "Echo: <last user text>"; with tools offered (tool_choice not "none")
and the last message not a tool result, it calls the first (or the chosen) tool with the last user
text as its first argument; after a tool result it says "The tool said: <result>". With
`enable_thinking` it also reasons. Model names steer failures: "error-NNN" answers HTTP NNN with
DashScope's error body (as an SSE `event:error` when a stream was asked), "error-midstream" breaks a
stream with an `event:error`, "slow" first waits `app[SLOW_SECONDS]`. Each request is appended to
`app[REQUESTS]` as {"path", "headers", "body"}; requests the real API would refuse get a 400.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import orjson
from aiohttp import web

REQUESTS = web.AppKey("requests", list)
SLOW_SECONDS = web.AppKey("slow_seconds", float)

ERROR_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 403: "AccessDenied", 404: "ModelNotFound",
               429: "Throttling.RateQuota", 500: "InternalError", 503: "ModelServiceUnavailable"}
ROLES = ("system", "user", "assistant", "tool")


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token a word."""
    return len(text.split())


def text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def request_id(body: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def error_body(status: int, message: str, rid: str = "fake-request") -> dict[str, Any]:
    return {"code": ERROR_CODES.get(status, "InternalError"), "message": message, "request_id": rid}


def sse(event_id: int, name: str, status: int, payload: dict[str, Any]) -> bytes:
    return (f"id:{event_id}\nevent:{name}\n:HTTP_STATUS/{status}\ndata:".encode()
            + orjson.dumps(payload) + b"\n\n")


def _problem(body: Any, multimodal: bool) -> str | None:
    """Why the real API would refuse this generation request, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "Model not specified"
    messages = (body.get("input") or {}).get("messages")
    if not isinstance(messages, list) or not messages:
        return "input.messages must be a non-empty list"
    if (body.get("parameters") or {}).get("result_format") != "message":
        return "this fake only speaks result_format=message"
    for message in messages:
        if message.get("role") not in ROLES:
            return f"Role must be in {ROLES}"
        content = message.get("content")
        if multimodal and not (isinstance(content, list) and all("text" in p or "image" in p for p in content)):
            return "multimodal content must be a list of {text} or {image} parts"
        if not multimodal and not isinstance(content, str):
            return "content must be a string"
        if message["role"] == "tool" and not message.get("tool_call_id"):
            return "tool messages need tool_call_id"
        for call in message.get("tool_calls") or []:
            if not isinstance((call.get("function") or {}).get("arguments"), str):
                return "tool_calls[].function.arguments must be a string"
    return None


def plan(body: dict[str, Any]) -> dict[str, Any]:
    """What the fake model says: reasoning, content, tool calls, finish reason and usage."""
    messages = body["input"]["messages"]
    parameters = body.get("parameters") or {}
    last = messages[-1]
    last_user = next((text_of(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    tools = parameters.get("tools") or []
    choice = parameters.get("tool_choice", "auto")
    rid = request_id(body)
    content, tool_calls, finish = "", [], "stop"
    if tools and choice != "none" and last["role"] != "tool":
        function = tools[0]["function"]
        if isinstance(choice, dict):
            function = next(t["function"] for t in tools if t["function"]["name"] == choice["function"]["name"])
        argument = next(iter((function.get("parameters") or {}).get("properties") or {"input": None}))
        tool_calls = [{"index": 0, "id": f"call_{rid[:12]}", "type": "function",
                       "function": {"name": function["name"],
                                    "arguments": orjson.dumps({argument: last_user}).decode()}}]
        finish = "tool_calls"
    elif last["role"] == "tool":
        content = "The tool said: " + text_of(last["content"])
    else:
        images = sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"] if "image" in p)
        content = "Echo: " + last_user + (f" (with {images} image{'s' * (images > 1)})" if images else "")
    words = content.split(" ") if content else []
    limit = parameters.get("max_tokens")
    if isinstance(limit, int) and len(words) > limit:
        words, finish = words[:limit], "length"
    reasoning = f"Thinking about: {last_user}" if parameters.get("enable_thinking") else ""
    prompt_tokens = sum(count_tokens(text_of(m["content"])) for m in messages) + 3 * len(messages)
    output_tokens = (len(words) + count_tokens(reasoning)
                     + sum(count_tokens(c["function"]["arguments"]) + 2 for c in tool_calls))
    usage: dict[str, Any] = {"input_tokens": prompt_tokens, "output_tokens": output_tokens,
                             "total_tokens": prompt_tokens + output_tokens}
    if reasoning:
        usage["output_tokens_details"] = {"reasoning_tokens": count_tokens(reasoning)}
    return {"request_id": rid, "reasoning": reasoning, "words": words, "tool_calls": tool_calls,
            "finish": finish, "usage": usage}


def _message(content: str, multimodal: bool, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"text": content}] if multimodal else content, **extra}


def answer(planned: dict[str, Any], multimodal: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if planned["reasoning"]:
        extra["reasoning_content"] = planned["reasoning"]
    if planned["tool_calls"]:
        extra["tool_calls"] = planned["tool_calls"]
    message = _message(" ".join(planned["words"]), multimodal, **extra)
    return {"output": {"choices": [{"finish_reason": planned["finish"], "message": message}]},
            "usage": planned["usage"], "request_id": planned["request_id"]}


def spaced(words: list[str]) -> list[str]:
    """Words as stream pieces: every one but the first keeps its leading space."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def stream_events(planned: dict[str, Any], incremental: bool, multimodal: bool) -> list[dict[str, Any]]:
    """The DashScope event payloads for one answer (cumulative text unless `incremental`)."""
    reasoning = planned["reasoning"].split(" ") if planned["reasoning"] else []
    pieces: list[tuple[str, Any]] = [("reasoning_content", piece) for piece in spaced(reasoning)]
    pieces += [("content", piece) for piece in spaced(planned["words"])]
    for call in planned["tool_calls"]:
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        pieces.append(("tool_calls", [{**call, "function": {**call["function"], "arguments": arguments[:half]}}]))
        pieces.append(("tool_calls", [{"index": call["index"], "id": "", "type": "function",
                                       "function": {"arguments": arguments[half:]}}]))
    usage = planned["usage"]
    events, sent = [], {"content": "", "reasoning_content": ""}
    for position, (field, value) in enumerate([*pieces, ("content", "")]):
        last = position == len(pieces)
        extra: dict[str, Any] = {}
        if field == "tool_calls":
            extra["tool_calls"] = value
        else:
            sent[field] += value
            extra[field] = value if incremental else sent[field]
        content = extra.pop("content", "" if incremental else sent["content"])
        output = min(position + 1, usage["output_tokens"]) if not last else usage["output_tokens"]
        events.append({"output": {"choices": [{"finish_reason": planned["finish"] if last else "null",
                                               "message": _message(content, multimodal, **extra)}]},
                       "usage": {**usage, "output_tokens": output, "total_tokens": usage["input_tokens"] + output},
                       "request_id": planned["request_id"]})
    return events


async def _record(request: web.Request) -> Any:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        body = None
    request.app[REQUESTS].append({"path": request.path, "headers": dict(request.headers), "body": body})
    return body


def _refuse(status: int, message: str, streaming: bool, rid: str = "fake-request") -> web.Response:
    payload = error_body(status, message, rid)
    if streaming:
        return web.Response(status=status, body=sse(1, "error", status, payload),
                            content_type="text/event-stream", charset="utf-8")
    return web.json_response(payload, status=status, dumps=lambda o: orjson.dumps(o).decode())


def _unauthorized(request: web.Request) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return scheme != "Bearer" or not key


async def generation(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    streaming = request.headers.get("X-DashScope-SSE") == "enable"
    if _unauthorized(request):
        return _refuse(401, "Invalid API-key provided.", streaming)
    multimodal = "multimodal" in request.path
    problem = _problem(body, multimodal)
    if problem:
        return _refuse(400, problem, streaming)
    model = body["model"]
    if model.startswith("error-") and model[6:].isdigit():
        return _refuse(int(model[6:]), f"Fake failure {model}", streaming, request_id(body))
    if model == "slow":
        await asyncio.sleep(request.app[SLOW_SECONDS])
    planned = plan(body)
    headers = {"x-request-id": planned["request_id"]}
    if not streaming:
        return web.Response(body=orjson.dumps(answer(planned, multimodal)), content_type="application/json",
                            headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream;charset=UTF-8"})
    await response.prepare(request)
    incremental = bool(body["parameters"].get("incremental_output"))
    events = stream_events(planned, incremental, multimodal)
    for event_id, payload in enumerate(events, start=1):
        if model == "error-midstream" and event_id == 3:
            await response.write(sse(event_id, "error", 500, error_body(500, "Fake failure mid-stream",
                                                                        planned["request_id"])))
            break
        await response.write(sse(event_id, "result", 200, payload))
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def embedding(request: web.Request) -> web.Response:
    body = await _record(request)
    if _unauthorized(request):
        return _refuse(401, "Invalid API-key provided.", False)
    texts = (body or {}).get("input", {}).get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return _refuse(400, "input.texts must be a non-empty list of strings", False)
    dimension = int((body.get("parameters") or {}).get("dimension") or 8)
    embeddings = []
    for index, text in enumerate(texts):
        seed = hashlib.sha256(text.encode()).digest() * (dimension // 16 + 1)
        values = struct.unpack(f"<{dimension}h", seed[: dimension * 2])
        embeddings.append({"text_index": index, "embedding": [v / 32768 for v in values]})
    tokens = sum(count_tokens(t) for t in texts)
    return web.json_response({"output": {"embeddings": embeddings}, "usage": {"total_tokens": tokens},
                              "request_id": request_id(body)})


async def models(request: web.Request) -> web.Response:
    request.app[REQUESTS].append({"path": request.path, "headers": dict(request.headers), "body": None})
    return web.json_response({"object": "list", "data": [
        {"id": "qwen-plus", "object": "model", "created": 1700000000, "owned_by": "system"},
        {"id": "text-embedding-v3", "object": "model", "created": 1700000000, "owned_by": "system"}]})


def make_app(slow_seconds: float = 1.0) -> web.Application:
    app = web.Application()
    app[REQUESTS] = []
    app[SLOW_SECONDS] = slow_seconds
    app.router.add_post("/api/v1/services/aigc/text-generation/generation", generation)
    app.router.add_post("/api/v1/services/aigc/multimodal-generation/generation", generation)
    app.router.add_post("/api/v1/services/embeddings/text-embedding/text-embedding", embedding)
    app.router.add_get("/compatible-mode/v1/models", models)
    return app
