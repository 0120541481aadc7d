"""The LLM endpoints: validate, route, record the request, call the provider, relay and record the answer.

This is the hot path. It keeps to dicts and bytes: the request is parsed once (orjson), answers are
relayed as received, and everything the recorder needs beyond raw bytes is worked out by the writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from chatledger.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamHTTPError
from chatledger.gateway.asgi import BodyTooLarge, Receive, Scope, Send, read_body, send_bytes, send_error
from chatledger.ids import uuid7
from chatledger.providers import Endpoint, ProviderCall, UpstreamRequest
from chatledger.routing import Router
from chatledger.sessions import api_key_fingerprint, first_user_text
from chatledger.sse import DONE, EventSplitter, is_usage_only_chunk
from chatledger.store.recorder_client import Recorder
from chatledger.store.records import RequestRecord, ResponseRecord

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
ERROR_EVENT = b'data: {"error"'
REQUIRED_FIELD = {"chat": "messages", "completions": "prompt", "embeddings": "input"}


@dataclass(slots=True)
class ProxyContext:
    router: Router
    writer: Recorder | None
    max_body_size: int
    ack_timeout: float


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _headers_of(scope: Scope) -> tuple[str | None, str | None, int | None]:
    authorization = session_id = None
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-session-id":
            session_id = value.decode("latin-1").strip() or None
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
    return authorization, session_id, length


def _parse(raw: bytes, endpoint: Endpoint) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request ({exc}).",
                             code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    field = REQUIRED_FIELD[endpoint]
    value = body.get(field)
    if value is None or (endpoint == "chat" and (not isinstance(value, list) or not value)):
        raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field,
                             code="missing_required_parameter")
    return body


class Exchange:
    """One request through the gateway, from the first byte read to the recorded answer."""

    __slots__ = (
        "api_key_hash",
        "authorization",
        "body",
        "context",
        "endpoint",
        "path",
        "raw",
        "recorded_request",
        "request_id",
        "session_hint",
        "started",
        "timestamp",
    )

    def __init__(self, context: ProxyContext, endpoint: Endpoint, path: str) -> None:
        self.context = context
        self.endpoint = endpoint
        self.path = path
        self.started = time.perf_counter()
        self.timestamp = _now_ms()
        self.request_id = uuid7()
        self.raw = b""
        self.body: dict[str, Any] = {}
        self.authorization: str | None = None
        self.session_hint: str | None = None
        self.api_key_hash: str | None = None
        self.recorded_request = False

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def id_header(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-chatledger-request-id", self.request_id.encode())]

    def record_request(self, provider: str, upstream_model: str, provider_request: bytes | None,
                       stream: bool) -> None:
        writer = self.context.writer
        self.recorded_request = True
        if writer is None:
            return
        model = self.body.get("model")
        writer.submit(RequestRecord(
            request_id=self.request_id, timestamp=self.timestamp, method="POST", path=self.path,
            endpoint=self.endpoint, first_user_text=first_user_text(self.body, self.endpoint),
            openai_request=self.raw, provider_request=provider_request,
            model=model if isinstance(model, str) else "", provider=provider, upstream_model=upstream_model,
            stream=stream, session_hint=self.session_hint, api_key_hash=self.api_key_hash))

    async def record_response(self, status: int, **fields: Any) -> None:
        """Record the answer and return once it is durable (see Writer.submit_and_wait)."""
        writer = self.context.writer
        if writer is not None:
            record = ResponseRecord(request_id=self.request_id, response_id=uuid7(), timestamp=_now_ms(),
                                    status_code=status, duration_ms=self.elapsed_ms(), **fields)
            await writer.submit_and_wait(record, self.context.ack_timeout)

    async def fail(self, send: Send, error: GatewayError) -> None:
        """Answer with an OpenAI-style error, recording the exchange (even one we could not parse)."""
        if not self.recorded_request:
            self.record_request("", "", None, bool(self.body.get("stream")))
        # An upstream's own error message (in its body) says more than ours; the writer extracts it.
        upstream = isinstance(error, UpstreamHTTPError)
        message = None if upstream else error.message
        provider_body = error.provider_body if upstream else None
        await self.record_response(error.status, openai_response=error.body(), error=message,
                                   provider_response=provider_body)
        await send_error(send, error, self.id_header())


async def handle_llm(context: ProxyContext, endpoint: Endpoint, scope: Scope, receive: Receive,
                     send: Send) -> None:
    exchange = Exchange(context, endpoint, scope["path"])
    exchange.authorization, exchange.session_hint, length = _headers_of(scope)
    exchange.api_key_hash = api_key_fingerprint(exchange.authorization)
    try:
        try:
            exchange.raw = await read_body(receive, context.max_body_size, length)
        except BodyTooLarge as exc:
            exchange.raw = exc.prefix
            raise
        exchange.body = _parse(exchange.raw, endpoint)
        body = exchange.body
        route = context.router.resolve(body["model"])
        route.provider.check_endpoint(endpoint)
        stream = endpoint != "embeddings" and body.get("stream") is True
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        call = ProviderCall(endpoint, body, exchange.raw, route.upstream_model, stream, wants_usage,
                            exchange.authorization)
        upstream_request = route.provider.prepare(call)
    except GatewayError as error:
        await exchange.fail(send, error)
        return
    exchange.record_request(route.provider.name, route.upstream_model, upstream_request.recorded, stream)
    if stream:
        await _relay_stream(exchange, upstream_request, route.provider.stream(call, upstream_request),
                            not wants_usage, receive, send)
        return
    try:
        completion = await route.provider.complete(call, upstream_request)
    except GatewayError as error:
        await exchange.fail(send, error)
        return
    await exchange.record_response(completion.status, openai_response=completion.body,
                                   provider_response=completion.provider_body)
    await send_bytes(send, completion.status, completion.body, completion.content_type,
                     completion.relay_headers + exchange.id_header())


async def _watch_disconnect(receive: Receive, task: asyncio.Task, state: dict[str, bool]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not state["finished"]:
                state["cut"] = True
                task.cancel()
            return


async def _relay_stream(exchange: Exchange, upstream_request: UpstreamRequest, chunks: AsyncIterator[bytes],
                        hide_usage: bool, receive: Receive, send: Send) -> None:
    try:
        first = await anext(chunks, b"")
    except GatewayError as error:
        await exchange.fail(send, error)
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + exchange.id_header()})
    events: list[bytes] = []
    splitter = EventSplitter()
    ttft_ms: int | None = None
    saw_done = False
    error: str | None = None
    tail = b""
    state = {"cut": False, "finished": False}
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.create_task(_watch_disconnect(receive, task, state))
    try:
        chunk = first
        while True:
            if chunk:
                out = []
                for event in splitter.feed(chunk):
                    events.append(event)
                    if b"[DONE]" in event and event.strip() == DONE.strip():
                        saw_done = True  # held back until the exchange is committed
                    elif event.startswith(ERROR_EVENT):
                        tail = event  # an error ends the stream: held back the same way
                    elif not (hide_usage and is_usage_only_chunk(event)):
                        out.append(event)
                if out:
                    if ttft_ms is None:
                        ttft_ms = exchange.elapsed_ms()
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
    except UpstreamError as exc:
        error = exc.message
        # The error event ends this stream: like [DONE], it goes out once the exchange is committed.
        tail = b"data: " + exc.body() + b"\n\n"
        events.append(tail)
    except asyncio.CancelledError:
        if not state["cut"]:
            raise
        task.uncancel()
    finally:
        state["finished"] = True
        watcher.cancel()
        if state["cut"]:
            await chunks.aclose()  # type: ignore[attr-defined]
    rest = splitter.rest()
    if rest:
        events.append(rest)
    raw_stream = upstream_request.provider_stream
    await exchange.record_response(200, stream_events=events, ttft_ms=ttft_ms, cut=state["cut"],
                                   provider_response=b"".join(raw_stream) if raw_stream else None,
                                   error=error or ("client disconnected before the end" if state["cut"] else None))
    if not state["cut"]:
        final = rest + (tail or (DONE if saw_done else b""))
        await send({"type": "http.response.body", "body": final, "more_body": False})
