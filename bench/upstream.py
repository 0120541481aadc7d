"""A fast fake OpenAI upstream for benchmarks: uvloop + httptools, answers precomputed.

It must never be the bottleneck, so it does no JSON work per request: it reads the body, looks for
`"stream":true`, and writes a canned chat.completion or a canned SSE stream (with a usage chunk).
Run: python bench/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import sys
import time

import httptools
import orjson
import uvloop

WORDS = ("The quick brown fox jumps over the lazy dog. " * 4).split(" ")


def _completion() -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(WORDS), "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 250, "completion_tokens": 40, "total_tokens": 290},
        "system_fingerprint": "fp_bench"})


def _stream() -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "bench-model", "system_fingerprint": "fp_bench"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": " " + w}, "finish_reason": None}]}
               for w in WORDS]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": {"prompt_tokens": 250, "completion_tokens": 40,
                                                   "total_tokens": 290}})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _response(body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


JSON_RESPONSE = _response(_completion(), b"application/json")
SSE_RESPONSE = _response(_stream(), b"text/event-stream")
STREAM_MARKERS = (b'"stream":true', b'"stream": true')


class Upstream(asyncio.Protocol):
    __slots__ = ("body", "parser", "transport")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        self.body = []
        stream = any(marker in body for marker in STREAM_MARKERS)
        assert self.transport is not None
        self.transport.write(SSE_RESPONSE if stream else JSON_RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
