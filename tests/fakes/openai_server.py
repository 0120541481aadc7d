"""A fake OpenAI-compatible upstream, speaking OpenAI's wire format (SSE streaming included).

Behaviour is chosen by the model name, so a test says what it wants in the request itself:
  "error-429" / "error-500" ...  answer that status with an OpenAI error body
  "slow"                         wait 2 s before answering (timeout tests)
  "hang"                         stream two chunks, then stall until the client goes away
  "drop"                         close the connection in the middle of a stream
anything else answers "Echo: <last user message>", or calls the first tool when tools are offered.
Every request is kept in app["requests"] (headers and JSON body) for assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
from aiohttp import web

REQUESTS = web.AppKey("requests", list)
STALLED = web.AppKey("stalled", list)
HUNG_UP = web.AppKey("hung_up", list)  # stalled streams whose client (the gateway) went away


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _answer(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None]:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if body.get("tools") and body.get("tool_choice") != "none" and last.get("role") != "tool":
        name = body["tools"][0]["function"]["name"]
        return "", [{"id": "call_fake_1", "type": "function",
                     "function": {"name": name, "arguments": '{"city": "Paris"}'}}]
    if last.get("role") == "tool":
        return f"Tool said: {_text(last.get('content'))}", None
    user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"Echo: {user}", None


def _usage(body: dict[str, Any], answer: str) -> dict[str, int]:
    prompt = len(orjson.dumps(body.get("messages") or body.get("prompt") or body.get("input") or "")) // 4
    completion = max(1, len(answer) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error(status: int) -> web.Response:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_exceeded"}
    body = {"error": {"message": f"fake upstream error {status}", "type": kinds.get(status, "server_error"),
                      "param": None, "code": f"fake_{status}"}}
    return web.json_response(body, status=status, headers={"x-request-id": f"req_fake_{status}",
                                                            "retry-after": "1"})


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[REQUESTS].append({"headers": dict(request.headers), "body": body, "path": request.path})
    model = body.get("model", "")
    if model.startswith("error-"):
        return _error(int(model.split("-")[1]))
    if model == "slow":
        await asyncio.sleep(2)
    answer, tool_calls = _answer(body)
    completion_id = "chatcmpl-fake" + hashlib.md5(orjson.dumps(body)).hexdigest()[:12]
    usage = _usage(body, answer)
    finish = "tool_calls" if tool_calls else "stop"
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": answer or None, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        n = int(body.get("n") or 1)
        payload = {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
                   "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                               for i in range(n)],
                   "usage": usage, "system_fingerprint": "fp_fake"}
        return web.Response(body=orjson.dumps(payload), content_type="application/json",
                            headers={"x-request-id": "req_" + completion_id})
    return await _stream_chat(request, body, completion_id, answer, tool_calls, usage, finish)


async def _stream_chat(request: web.Request, body: dict[str, Any], completion_id: str, answer: str,
                       tool_calls: list[dict[str, Any]] | None, usage: dict[str, int], finish: str
                       ) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    model = body["model"]
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_fake"}
    include_usage = (body.get("stream_options") or {}).get("include_usage")
    if include_usage:
        base["usage"] = None

    async def emit(choices: list[dict[str, Any]], **extra: Any) -> None:
        await response.write(b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n")

    await emit([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    words = answer.split(" ") if answer else []
    for i, word in enumerate(words):
        if model == "hang" and i == 1:
            # Noted before the word goes out, so a client that saw it can count on the note.
            request.app[STALLED].append(completion_id)
        await emit([{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}])
        if model == "hang" and i == 1:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                request.app[HUNG_UP].append(completion_id)
                raise
        if model == "drop" and i == 1:
            assert request.transport is not None
            request.transport.close()
            return response
    for index, call in enumerate(tool_calls or []):
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        await emit([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}])
        arguments = call["function"]["arguments"]
        for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2:]):
            await emit([{"index": 0, "delta": {"tool_calls": [{"index": index, "function": {"arguments": part}}]},
                         "finish_reason": None}])
    await emit([{"index": 0, "delta": {}, "finish_reason": finish}])
    if include_usage:
        await emit([], usage=usage)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def completions(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[REQUESTS].append({"headers": dict(request.headers), "body": body, "path": request.path})
    prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else orjson.dumps(body.get("prompt")).decode()
    answer = f"Continued: {prompt}"
    payload = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body["model"],
               "choices": [{"index": 0, "text": answer, "logprobs": None, "finish_reason": "stop"}],
               "usage": _usage(body, answer)}
    return web.json_response(payload)


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[REQUESTS].append({"headers": dict(request.headers), "body": body, "path": request.path})
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]} for i in range(len(inputs))]
    tokens = sum(len(str(x)) // 4 + 1 for x in inputs)
    return web.json_response({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "fake-gpt", "object": "model", "created": 1700000000, "owned_by": "fake"}]})


def create_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[REQUESTS] = []
    app[STALLED] = []
    app[HUNG_UP] = []
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app
