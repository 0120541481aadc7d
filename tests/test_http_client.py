"""The upstream HTTP client against real sockets: reuse, stale connections, framing, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from chatledger.http_client import ConnectError, ConnectionClosed, HTTPClient, ReadTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def _run(handler: Handler, test: Callable[[str, dict], Awaitable[None]]) -> dict:
    stats = {"connections": 0, "requests": []}

    async def main() -> None:
        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stats["connections"] += 1
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(counted, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await test(f"http://127.0.0.1:{port}", stats)

    asyncio.run(main())
    return stats


def _keep_alive(body: bytes, stats_key: str = "requests") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            del request
    return handler


def test_connections_are_kept_alive_and_reused():
    async def test(url: str, stats: dict) -> None:
        client = HTTPClient()
        for _ in range(5):
            response = await client.send("POST", url + "/v1/x", {"content-type": "application/json"}, b"{}",
                                         connect_timeout=5, read_timeout=5)
            assert (response.status, await response.read()) == (200, b'{"ok":1}')
        assert response.header(b"content-type") == b"application/json"
        client.close()

    assert _run(_keep_alive(b'{"ok":1}'), test)["connections"] == 1


def test_a_connection_the_server_closed_is_retried_once_on_a_fresh_one():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # ...then the server closes the idle keep-alive connection, as servers do.

    async def test(url: str, stats: dict) -> None:
        client = HTTPClient()
        for _ in range(3):
            response = await client.send("GET", url, {}, None, connect_timeout=5, read_timeout=5)
            assert await response.read() == b"ok"
            await asyncio.sleep(0.05)  # let the close arrive, or not: both paths must work

    assert _run(handler, test)["connections"] == 3


def test_chunked_and_close_delimited_bodies():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if b"/chunked" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"data: 1\n\n", b"data: 2\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        await asyncio.sleep(0.01)

    async def test(url: str, stats: dict) -> None:
        client = HTTPClient()
        response = await client.send("POST", url + "/chunked", {}, b"x", connect_timeout=5, read_timeout=5,
                                     streaming=True)
        assert [chunk async for chunk in response.chunks()] == [b"data: 1\n\n", b"data: 2\n\n"]
        response = await client.send("GET", url + "/close", {}, None, connect_timeout=5, read_timeout=5)
        assert await response.read() == b"until the end"

    _run(handler, test)


def test_silence_past_the_read_timeout_fails():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def test(url: str, stats: dict) -> None:
        client = HTTPClient()
        response = await client.send("POST", url, {}, b"x", connect_timeout=5, read_timeout=0.2, streaming=True)
        received = []
        with pytest.raises(ReadTimeout):
            async for chunk in response.chunks():
                received.append(chunk)
        assert received == [b"hello"]

    _run(handler, test)


def test_refused_and_dropped_connections_are_errors():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def test(url: str, stats: dict) -> None:
        client = HTTPClient()
        response = await client.send("GET", url, {}, None, connect_timeout=5, read_timeout=5)
        with pytest.raises(ConnectionClosed):
            await response.read()
        with pytest.raises(ConnectError):
            await client.send("GET", "http://127.0.0.1:1/", {}, None, connect_timeout=5, read_timeout=5)

    _run(handler, test)


def test_a_large_streamed_body_arrives_whole():
    payload = bytes(range(256)) * 40_000  # 10 MB: reading pauses and resumes on the way

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()

    async def test(url: str, stats: dict) -> None:
        client = HTTPClient()
        response = await client.send("GET", url, {}, None, connect_timeout=5, read_timeout=5, streaming=True)
        received = bytearray()
        async for chunk in response.chunks():
            received += chunk
            await asyncio.sleep(0)
        assert bytes(received) == payload

    _run(handler, test)
