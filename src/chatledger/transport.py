"""The upstream transport: one pooled HTTP client per app, its errors mapped onto the gateway's tree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from chatledger.errors import UpstreamTimeout, UpstreamUnreachable
from chatledger.http_client import ConnectError, ConnectionClosed, HTTPClient, ReadTimeout, Response

# Upstream headers worth handing back to the client (rate limits, request ids, retry hints).
RELAYED_HEADER_PREFIXES = (b"x-ratelimit-", b"x-request-id", b"openai-", b"retry-after", b"anthropic-",
                           b"x-dashscope-", b"request-id")
TRANSPORT_ERRORS = (ConnectError, ConnectionClosed, ReadTimeout, OSError, TimeoutError)


@dataclass(slots=True, frozen=True)
class Timeouts:
    connect: float
    read: float


@dataclass(slots=True)
class Reply:
    status: int
    content_type: bytes
    relay_headers: list[tuple[bytes, bytes]]
    body: bytes


def relay_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.startswith(RELAYED_HEADER_PREFIXES)]


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, ReadTimeout | TimeoutError):
        return UpstreamTimeout(f"upstream did not answer in time: {exc}")
    return UpstreamUnreachable(f"upstream connection failed: {exc}")


class StreamingReply:
    def __init__(self, response: Response) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.header(b"content-type", b"application/json") or b"application/json"
        self.relay_headers = relay_headers(response.headers)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TRANSPORT_ERRORS as exc:
            raise _translate(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.chunks():
                yield chunk
        except TRANSPORT_ERRORS as exc:
            raise _translate(exc) from exc


class Transport:
    """Owned by the app; started in its lifespan, closed at shutdown."""

    def __init__(self) -> None:
        self._client: HTTPClient | None = None

    async def start(self) -> None:
        self._client = HTTPClient()

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                      timeouts: Timeouts) -> Reply:
        assert self._client is not None, "transport not started"
        try:
            response = await self._client.send(method, url, headers, body, connect_timeout=timeouts.connect,
                                               read_timeout=timeouts.read)
            payload = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise _translate(exc) from exc
        return Reply(response.status, response.header(b"content-type", b"application/json") or b"application/json",
                     relay_headers(response.headers), payload)

    @asynccontextmanager
    async def stream(self, url: str, headers: dict[str, str], body: bytes,
                     timeouts: Timeouts) -> AsyncIterator[StreamingReply]:
        assert self._client is not None, "transport not started"
        try:
            response = await self._client.send("POST", url, headers, body, connect_timeout=timeouts.connect,
                                               read_timeout=timeouts.read, streaming=True)
        except TRANSPORT_ERRORS as exc:
            raise _translate(exc) from exc
        try:
            yield StreamingReply(response)
        finally:
            # A half-read response takes its connection with it instead of poisoning the pool.
            response.close()
