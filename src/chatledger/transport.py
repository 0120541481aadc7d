"""The upstream HTTP client: one pooled aiohttp session, errors mapped onto the gateway's tree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from chatledger.errors import UpstreamTimeout, UpstreamUnreachable

# Upstream headers worth handing back to the client (rate limits, request ids, retry hints).
RELAYED_HEADER_PREFIXES = ("x-ratelimit-", "x-request-id", "openai-", "retry-after", "anthropic-",
                           "x-dashscope-", "request-id")


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


def relay_headers(headers: aiohttp.typedefs.LooseHeaders) -> list[tuple[bytes, bytes]]:
    kept = []
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(RELAYED_HEADER_PREFIXES):
            kept.append((lower.encode("latin-1"), value.encode("latin-1")))
    return kept


class StreamingReply:
    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self.status = response.status
        self.content_type = response.headers.get("content-type", "application/json").encode("latin-1")
        self.relay_headers = relay_headers(response.headers)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from exc


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"upstream did not answer in time ({type(exc).__name__})")
    return UpstreamUnreachable(f"upstream connection failed: {exc}")


class Transport:
    """Owned by the app; created in its lifespan, closed at shutdown."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                              skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, sock_read=timeouts.read)

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                      timeouts: Timeouts) -> Reply:
        assert self._session is not None, "transport not started"
        try:
            async with self._session.request(method, url, headers=headers, data=body,
                                             timeout=self._client_timeout(timeouts)) as response:
                payload = await response.read()
                return Reply(response.status,
                             response.headers.get("content-type", "application/json").encode("latin-1"),
                             relay_headers(response.headers), payload)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from exc

    @asynccontextmanager
    async def stream(self, url: str, headers: dict[str, str], body: bytes,
                     timeouts: Timeouts) -> AsyncIterator[StreamingReply]:
        assert self._session is not None, "transport not started"
        try:
            response = await self._session.post(url, headers=headers, data=body,
                                                timeout=self._client_timeout(timeouts))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from exc
        try:
            yield StreamingReply(response, timeouts.read)
        finally:
            # Closing (not releasing) drops a half-read connection instead of reusing it.
            if response.content.at_eof():
                response.release()
            else:
                response.close()
