"""DashScopeProvider against the fake DashScope server, through a real Transport."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from chatledger.completion import ChunkAccumulator
from chatledger.config import ProviderConfig
from chatledger.errors import InvalidRequest, UpstreamHTTPError, UpstreamTimeout
from chatledger.providers.base import Completion, Endpoint, ProviderCall, UpstreamRequest
from chatledger.providers.dashscope import DashScopeProvider, StreamTranslator
from chatledger.sse import EventSplitter, event_data
from chatledger.transport import Timeouts, Transport
from tests.fakes.dashscope_server import REQUESTS, make_app
from tests.fakes.server import ServerThread

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="module")
def server():
    with ServerThread(make_app(slow_seconds=0.5)) as running:
        yield running


def make_provider(url: str, transport: Transport, api_key: str | None = "k", read: float = 5) -> DashScopeProvider:
    config = ProviderConfig(name="qwen", type="dashscope", base_url=url,
                            api_key=SecretStr(api_key) if api_key else None)
    return DashScopeProvider(config, transport, Timeouts(5, read))


def make_call(body: dict[str, Any], endpoint: Endpoint = "chat", auth: str | None = None) -> ProviderCall:
    return ProviderCall(endpoint=endpoint, body=body, raw=orjson.dumps(body), upstream_model=body["model"],
                        stream=bool(body.get("stream")), client_wants_usage=False, caller_authorization=auth)


def drive(url: str, body: dict[str, Any], endpoint: Endpoint = "chat", api_key: str | None = "k",
          auth: str | None = None, read: float = 5) -> tuple[UpstreamRequest, Completion | bytes]:
    """prepare, then complete (or stream, joining the bytes) one call on a fresh transport."""

    async def main() -> tuple[UpstreamRequest, Completion | bytes]:
        transport = Transport()
        await transport.start()
        try:
            provider = make_provider(url, transport, api_key, read)
            call = make_call(body, endpoint, auth)
            request = provider.prepare(call)
            if call.stream:
                return request, b"".join([chunk async for chunk in provider.stream(call, request)])
            return request, await provider.complete(call, request)
        finally:
            await transport.close()

    return asyncio.run(main())


def events(raw: bytes) -> list[Any]:
    """Each event's data: parsed JSON, or the raw bytes for [DONE]."""
    splitter = EventSplitter()
    found = splitter.feed(raw)
    assert splitter.rest() == b""
    data = [event_data(e) for e in found]
    return [d if d == b"[DONE]" else orjson.loads(d) for d in data if d is not None]


def accumulate(payloads: list[Any]) -> dict[str, Any]:
    accumulator = ChunkAccumulator()
    for payload in payloads:
        if isinstance(payload, dict):
            accumulator.add(payload)
    return accumulator.result()


def last_request(server: ServerThread) -> dict[str, Any]:
    return server.app[REQUESTS][-1]


def test_prepare_translates_the_chat_request():
    body = {"model": "alias", "stream": True, "stream_options": {"include_usage": True}, "user": "u1",
            "messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                      {"type": "text", "text": "there"}]}],
            "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 50, "stop": ["END"], "seed": 7, "n": 1,
            "presence_penalty": 0.1, "frequency_penalty": 0.2, "response_format": {"type": "json_object"},
            "tools": TOOLS, "tool_choice": "auto", "enable_thinking": False, "enable_search": True,
            "top_k": None}
    call = ProviderCall("chat", body, orjson.dumps(body), "qwen-plus", True, False, None)
    request = make_provider("http://upstream/api/v1/", Transport()).prepare(call)

    assert request.url == "http://upstream/api/v1/services/aigc/text-generation/generation"
    assert request.headers["Authorization"] == "Bearer k"
    assert request.headers["X-DashScope-SSE"] == "enable"
    assert request.headers["Accept"] == "text/event-stream"
    assert request.recorded == request.body
    sent = orjson.loads(request.body)
    assert sent["model"] == "qwen-plus"
    assert sent["input"]["messages"] == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hello there"}]
    assert sent["parameters"] == {
        "result_format": "message", "incremental_output": True, "temperature": 0.5, "top_p": 0.9,
        "max_tokens": 50, "stop": ["END"], "seed": 7, "n": 1, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "response_format": {"type": "json_object"}, "tools": TOOLS, "tool_choice": "auto",
        "enable_thinking": False, "enable_search": True}


def test_prepare_refuses_what_dashscope_cannot_take():
    provider = make_provider("http://upstream", Transport())
    with pytest.raises(InvalidRequest):
        provider.prepare(make_call({"model": "m", "messages": []}))
    with pytest.raises(InvalidRequest):
        provider.prepare(make_call({"model": "m", "input": [[1, 2, 3]]}, "embeddings"))
    with pytest.raises(InvalidRequest):
        provider.prepare(make_call({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]}))


def test_chat_completion(server):
    body = {"model": "qwen-plus", "messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "hello there"}]}
    request, completion = drive(server.url, body)
    assert isinstance(completion, Completion)
    payload = orjson.loads(completion.body)
    raw = orjson.loads(completion.provider_body)

    assert payload["object"] == "chat.completion"
    assert payload["id"] == "chatcmpl-" + raw["request_id"]
    assert payload["model"] == "qwen-plus"
    assert payload["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Echo: hello there"},
                                   "logprobs": None, "finish_reason": "stop"}]
    usage = raw["usage"]
    assert payload["usage"] == {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
                                "total_tokens": usage["total_tokens"]}
    assert payload["usage"]["completion_tokens"] == 3
    assert (b"x-request-id", raw["request_id"].encode()) in completion.relay_headers
    seen = last_request(server)
    assert seen["headers"]["Authorization"] == "Bearer k"
    assert "X-DashScope-SSE" not in seen["headers"]
    assert seen["body"] == orjson.loads(request.recorded)


def test_streaming_chat(server):
    body = {"model": "qwen-plus", "stream": True, "messages": [{"role": "user", "content": "stream me please"}]}
    request, raw = drive(server.url, body)
    assert b":HTTP_STATUS/200" in b"".join(request.provider_stream)  # DashScope's own bytes
    payloads = events(raw)

    assert payloads[-1] == b"[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-") for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    assert "".join(p for p in pieces if p) == "Echo: stream me please"
    assert len([p for p in pieces if p]) == 4  # one event a word: incremental output, not re-sent text
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-1]["usage"]["total_tokens"] == chunks[-1]["usage"]["prompt_tokens"] + 4

    seen = last_request(server)
    assert seen["headers"]["X-DashScope-SSE"] == "enable"
    assert seen["body"]["parameters"]["incremental_output"] is True


def test_stream_and_complete_agree(server):
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "same either way"}],
            "enable_thinking": True}
    _, completion = drive(server.url, body)
    _, raw = drive(server.url, {**body, "stream": True})
    whole = orjson.loads(completion.body)
    rebuilt = accumulate(events(raw))

    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] == "Thinking about: same either way"
    assert rebuilt["choices"][0]["message"] == message
    assert rebuilt["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "stop"
    assert rebuilt["usage"] == whole["usage"]
    assert whole["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}


def test_tool_call_round_trip(server):
    first = {"model": "qwen-plus", "tools": TOOLS,
             "messages": [{"role": "user", "content": "Paris"}]}
    _, completion = drive(server.url, first)
    choice = orjson.loads(completion.body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and "index" not in call
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}

    second = {**first, "messages": [*first["messages"], {"role": "assistant", "content": None, "tool_calls": [call]},
                                    {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}]}
    _, completion = drive(server.url, second)
    answer = orjson.loads(completion.body)["choices"][0]
    assert answer["message"]["content"] == "The tool said: sunny, 21 C"
    assert answer["finish_reason"] == "stop"
    sent = last_request(server)["body"]["input"]["messages"]
    assert sent[1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}


def test_streaming_tool_calls(server):
    body = {"model": "qwen-plus", "stream": True, "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "messages": [{"role": "user", "content": "Lisbon"}]}
    _, raw = drive(server.url, body)
    payloads = events(raw)
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in payloads[:-1]
              if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]

    assert len(deltas) == 2
    assert deltas[0][0]["id"].startswith("call_") and deltas[0][0]["function"]["name"] == "get_weather"
    assert deltas[1] == [{"index": 0, "function": {"arguments": deltas[1][0]["function"]["arguments"]}}]
    rebuilt = accumulate(payloads)
    (call,) = rebuilt["choices"][0]["message"]["tool_calls"]
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Lisbon"}
    assert rebuilt["choices"][0]["finish_reason"] == "tool_calls"
    assert rebuilt["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(("model", "stream", "status", "type_", "code"), [
    ("error-400", False, 400, "invalid_request_error", "InvalidParameter"),
    ("error-429", True, 429, "rate_limit_error", "Throttling.RateQuota"),
    ("error-500", True, 500, "server_error", "InternalError"),
])
def test_error_status_is_relayed(server, model, stream, status, type_, code):
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(UpstreamHTTPError) as caught:
        drive(server.url, body)
    assert caught.value.status == status
    error = orjson.loads(caught.value.body())["error"]
    assert error["type"] == type_ and error["code"] == code
    assert error["message"] == f"Fake failure {model}"


def test_key_falls_back_to_the_callers_authorization(server):
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}
    drive(server.url, body, api_key=None, auth="Bearer caller-key")
    assert last_request(server)["headers"]["Authorization"] == "Bearer caller-key"

    with pytest.raises(UpstreamHTTPError) as caught:
        drive(server.url, body, api_key=None)
    assert caught.value.status == 401
    assert orjson.loads(caught.value.body())["error"]["type"] == "authentication_error"


def test_error_mid_stream_becomes_an_error_event(server):
    body = {"model": "error-midstream", "stream": True,
            "messages": [{"role": "user", "content": "one two three four five"}]}
    _, raw = drive(server.url, body)
    payloads = events(raw)

    assert b"[DONE]" not in payloads
    assert payloads[-1]["error"]["code"] == "InternalError"
    assert payloads[-1]["error"]["type"] == "server_error"
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in payloads[:-1])


RESULT = (b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"choices":[{"message":{"role":"assistant",'
          b'"content":"half"},"finish_reason":"null"}]},"request_id":"r"}\n\n')
REFUSAL = (b'id:2\nevent:error\n:HTTP_STATUS/400\ndata:{"code":"DataInspectionFailed",'
           b'"message":"Input data may contain inappropriate content.","request_id":"r"}\n\n')


def translator() -> StreamTranslator:
    return StreamTranslator(make_call({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}))


def error_of(event: bytes) -> dict[str, Any]:
    return orjson.loads(event_data(event))["error"]


def test_stream_error_before_any_chunk_is_raised_with_its_status():
    with pytest.raises(UpstreamHTTPError) as caught:
        translator().feed(REFUSAL)
    assert caught.value.status == 400
    assert orjson.loads(caught.value.body())["error"]["code"] == "DataInspectionFailed"

    with pytest.raises(UpstreamHTTPError) as caught:
        translator().finish()  # a 200 with an empty body
    assert caught.value.status == 502


def test_stream_error_after_chunks_is_a_last_event():
    stream = translator()
    out = stream.feed(RESULT + REFUSAL + RESULT)
    assert stream.closed
    assert [orjson.loads(event_data(e)).get("choices", [{}])[0].get("delta") for e in out[:2]] == [
        {"role": "assistant", "content": ""}, {"content": "half"}]
    assert error_of(out[-1])["code"] == "DataInspectionFailed" and len(out) == 3

    stream = translator()
    stream.feed(RESULT)
    (tail,) = stream.finish()  # the upstream stopped without a finish reason
    assert error_of(tail)["code"] == "upstream_bad_response"


def test_stream_bytes_may_arrive_in_any_pieces():
    finish = RESULT.replace(b'"half"', b'" done"').replace(b'"null"', b'"stop"')
    whole = RESULT + finish.removesuffix(b"\n\n")  # the last event is unterminated too
    stream = translator()
    out = [event for index in range(len(whole)) for event in stream.feed(whole[index:index + 1])]
    out += stream.finish()
    rebuilt = accumulate(events(b"".join(out)))
    assert rebuilt["choices"][0]["message"]["content"] == "half done"
    assert rebuilt["choices"][0]["finish_reason"] == "stop"
    assert out[-1] == b"data: [DONE]\n\n"


def test_completions_endpoint(server):
    body = {"model": "qwen-plus", "prompt": "complete this", "max_tokens": 2, "logprobs": 2}
    _, completion = drive(server.url, body, endpoint="completions")
    payload = orjson.loads(completion.body)
    assert payload["object"] == "text_completion" and payload["id"].startswith("cmpl-")
    assert payload["choices"] == [{"index": 0, "text": "Echo: complete", "logprobs": None, "finish_reason": "length"}]
    sent = last_request(server)["body"]
    assert sent["input"]["messages"] == [{"role": "user", "content": "complete this"}]
    assert "logprobs" not in sent["parameters"]

    _, raw = drive(server.url, {**body, "stream": True}, endpoint="completions")
    payloads = events(raw)
    assert "".join(c["choices"][0]["text"] for c in payloads[:-1] if c["choices"]) == "Echo: complete"
    assert payloads[-2]["object"] == "text_completion" and payloads[-2]["usage"]["completion_tokens"] == 2


def test_images_go_to_the_multimodal_endpoint(server):
    body = {"model": "qwen-vl-plus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "what is this"}]}]}
    request, completion = drive(server.url, body)
    assert request.url.endswith("/api/v1/services/aigc/multimodal-generation/generation")
    assert last_request(server)["body"]["input"]["messages"] == [
        {"role": "user", "content": [{"image": "https://example.com/cat.png"}, {"text": "what is this"}]}]
    message = orjson.loads(completion.body)["choices"][0]["message"]
    assert message["content"] == "Echo: what is this (with 1 image)"


def test_embeddings(server):
    body = {"model": "text-embedding-v3", "input": ["first text", "second"], "dimensions": 16,
            "text_type": "query"}
    request, completion = drive(server.url, body, endpoint="embeddings")
    assert request.url.endswith("/api/v1/services/embeddings/text-embedding/text-embedding")
    assert last_request(server)["body"] == {"model": "text-embedding-v3", "input": {"texts": ["first text", "second"]},
                                            "parameters": {"dimension": 16, "text_type": "query"}}
    payload = orjson.loads(completion.body)
    assert payload["object"] == "list" and payload["model"] == "text-embedding-v3"
    assert [d["index"] for d in payload["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 16 for d in payload["data"])
    assert payload["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    _, encoded = drive(server.url, {**body, "encoding_format": "base64"}, endpoint="embeddings")
    vector = orjson.loads(encoded.body)["data"][0]["embedding"]
    decoded = struct.unpack("<16f", base64.b64decode(vector))
    assert decoded == pytest.approx(payload["data"][0]["embedding"])


def test_slow_upstream_times_out(server):
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(UpstreamTimeout):
        drive(server.url, body, read=0.1)


def test_list_models(server):
    async def main() -> list[dict[str, Any]]:
        transport = Transport()
        await transport.start()
        try:
            return await make_provider(server.url, transport).list_models()
        finally:
            await transport.close()

    assert [m["id"] for m in asyncio.run(main())] == ["qwen-plus", "text-embedding-v3"]
    assert last_request(server)["headers"]["Authorization"] == "Bearer k"
