"""Small ASGI helpers: reading a bounded body, sending JSON, picking headers out of the scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from chatledger.errors import GatewayError, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class BodyTooLarge(PayloadTooLarge):
    def __init__(self, limit: int, prefix: bytes) -> None:
        super().__init__(f"Request body is larger than the gateway's limit of {limit} bytes.")
        self.prefix = prefix


async def read_body(receive: Receive, limit: int, declared_length: int | None) -> bytes:
    if declared_length is not None and declared_length > limit:
        raise BodyTooLarge(limit, b"")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge(limit, body[:65536])
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, b"".join(parts)[:65536])
        parts.append(chunk)
    return b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    response_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        response_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, status: int, payload: Any,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_bytes(send, status, orjson.dumps(payload), JSON, headers)


async def send_error(send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    extra = error.headers() + (headers or [])
    content_type = getattr(error, "content_type", JSON)
    await send_bytes(send, error.status, error.body(), content_type, extra)


def client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None
