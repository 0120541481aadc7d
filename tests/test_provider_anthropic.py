"""AnthropicProvider against the fake Messages API, through a real Transport."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from chatledger.completion import ChunkAccumulator
from chatledger.config import ProviderConfig
from chatledger.errors import InvalidRequest, UpstreamHTTPError, UpstreamTimeout
from chatledger.providers.anthropic import AnthropicProvider, StreamTranslator, translate_request
from chatledger.providers.base import Completion, Endpoint, ProviderCall, UpstreamRequest
from chatledger.sse import EventSplitter, event_data
from chatledger.transport import Timeouts, Transport
from tests.fakes.anthropic_server import REQUESTS, make_app
from tests.fakes.server import ServerThread


def function_tool(name: str, argument: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": f"Look up {argument}",
                                             "parameters": {"type": "object",
                                                            "properties": {argument: {"type": "string"}}}}}


WEATHER = function_tool("get_weather", "city")
TIME = function_tool("get_time", "zone")


@pytest.fixture(scope="module")
def server():
    with ServerThread(make_app(slow_seconds=0.5)) as running:
        yield running


def make_provider(url: str, transport: Transport, api_key: str | None = "k", read: float = 5) -> AnthropicProvider:
    config = ProviderConfig(name="claude", type="anthropic", base_url=url,
                            api_key=SecretStr(api_key) if api_key else None)
    return AnthropicProvider(config, transport, Timeouts(5, read))


def make_call(body: dict[str, Any], endpoint: Endpoint = "chat", auth: str | None = None) -> ProviderCall:
    return ProviderCall(endpoint=endpoint, body=body, raw=orjson.dumps(body), upstream_model=body["model"],
                        stream=bool(body.get("stream")), client_wants_usage=False, caller_authorization=auth)


def drive(url: str, body: dict[str, Any], api_key: str | None = "k", auth: str | None = None,
          read: float = 5) -> tuple[UpstreamRequest, Completion | bytes]:
    """prepare, then complete (or stream, joining the bytes) one call on a fresh transport."""

    async def main() -> tuple[UpstreamRequest, Completion | bytes]:
        transport = Transport()
        await transport.start()
        try:
            provider = make_provider(url, transport, api_key, read)
            call = make_call(body, auth=auth)
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


def test_prepare_translates_the_request():
    call_a = {"id": "toolu_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    call_b = {"id": "toolu_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
    body = {"model": "alias", "stream": True, "user": "u-1", "stop": "END", "temperature": 0.2, "top_p": 0.8,
            "tools": [WEATHER, TIME], "tool_choice": "required",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]},
                {"role": "user", "content": "Weather and time in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [call_a, call_b]},
                {"role": "tool", "tool_call_id": "toolu_a", "content": "rain"},
                {"role": "tool", "tool_call_id": "toolu_b", "content": [{"type": "text", "text": "noon"}]},
                {"role": "user", "content": "Thanks"}]}
    call = ProviderCall("chat", body, orjson.dumps(body), "claude-sonnet-4-0", True, False, None)
    request = make_provider("https://api.example.com/v1/", Transport()).prepare(call)

    assert request.url == "https://api.example.com/v1/messages"
    assert request.headers["x-api-key"] == "k"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["Content-Type"] == "application/json"
    assert request.recorded == request.body
    assert orjson.loads(request.body) == {
        "model": "claude-sonnet-4-0", "max_tokens": 4096, "stream": True,
        "system": "Be brief.\n\nUse metric units.",
        "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.8, "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Look up city",
                   "input_schema": WEATHER["function"]["parameters"]},
                  {"name": "get_time", "description": "Look up zone", "input_schema": TIME["function"]["parameters"]}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                {"type": "text", "text": "Weather and time in Oslo?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "rain"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": [{"type": "text", "text": "noon"}]},
                {"type": "text", "text": "Thanks"}]}]}


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tool_choice_translation(choice, parallel, expected):
    body = {"model": "m", "max_tokens": 10, "tools": [WEATHER], "tool_choice": choice,
            "parallel_tool_calls": parallel, "messages": [{"role": "user", "content": "hi"}]}
    translated = translate_request(make_call(body))
    assert translated.get("tool_choice") == expected
    assert translated["max_tokens"] == 10


def test_prepare_refuses_what_anthropic_cannot_take():
    provider = make_provider("http://upstream", Transport())
    for body in ({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]},
                 {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
                 {"model": "m", "messages": [{"role": "user", "content": [
                     {"type": "input_audio", "input_audio": {"data": "x"}}]}]}):
        with pytest.raises(InvalidRequest):
            provider.prepare(make_call(body))
    with pytest.raises(InvalidRequest) as caught:
        provider.prepare(make_call({"model": "m", "input": "x"}, endpoint="embeddings"))
    assert caught.value.code == "unsupported_endpoint"


def test_chat_completion(server):
    body = {"model": "claude-sonnet-4-0", "max_completion_tokens": 100,
            "messages": [{"role": "system", "content": "You are terse and exact."},
                         {"role": "user", "content": "hello there"}]}
    request, completion = drive(server.url, body)
    assert isinstance(completion, Completion)
    payload = orjson.loads(completion.body)
    raw = orjson.loads(completion.provider_body)

    assert raw["type"] == "message" and payload["id"] == raw["id"]
    assert payload["object"] == "chat.completion" and payload["model"] == "claude-sonnet-4-0"
    assert payload["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Echo: hello there"},
                                   "logprobs": None, "finish_reason": "stop"}]
    usage = raw["usage"]
    assert usage["cache_read_input_tokens"] == 5  # the fake reports the system prompt as cached
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert payload["usage"] == {"prompt_tokens": prompt, "completion_tokens": usage["output_tokens"],
                                "total_tokens": prompt + usage["output_tokens"],
                                "prompt_tokens_details": {"cached_tokens": 5}}
    assert (b"anthropic-ratelimit-requests-remaining", b"99") in completion.relay_headers
    seen = last_request(server)
    assert seen["headers"]["x-api-key"] == "k"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["body"] == orjson.loads(request.recorded)
    assert seen["body"]["max_tokens"] == 100


def test_streaming_chat(server):
    body = {"model": "claude-sonnet-4-0", "stream": True, "messages": [{"role": "user", "content": "stream me please"}]}
    request, raw = drive(server.url, body)
    assert b"event: message_start" in b"".join(request.provider_stream)  # Anthropic's own bytes
    payloads = events(raw)

    assert payloads[-1] == b"[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("msg_") for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    assert "".join(p for p in pieces if p) == "Echo: stream me please"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert last_request(server)["body"]["stream"] is True


def test_stream_and_complete_agree(server):
    body = {"model": "claude-sonnet-4-0", "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "same either way"}]}
    _, completion = drive(server.url, body)
    _, raw = drive(server.url, {**body, "stream": True})
    whole = orjson.loads(completion.body)
    rebuilt = accumulate(events(raw))

    message = whole["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Echo: same either way",
                       "reasoning_content": "Thinking about: same either way"}
    assert rebuilt["choices"][0]["message"] == message
    assert rebuilt["choices"][0]["finish_reason"] == "stop"
    assert rebuilt["usage"] == whole["usage"]


def test_tool_call_round_trip(server):
    first = {"model": "claude-sonnet-4-0", "tools": [WEATHER, TIME], "messages": [{"role": "user", "content": "Oslo"}]}
    _, completion = drive(server.url, first)
    choice = orjson.loads(completion.body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Calling get_weather and get_time."
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}, {"zone": "Oslo"}]
    assert all(c["type"] == "function" and c["id"].startswith("toolu_") for c in calls)

    second = {**first, "messages": [
        *first["messages"],
        {"role": "assistant", "content": choice["message"]["content"], "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "rain"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"}]}
    _, completion = drive(server.url, second)
    answer = orjson.loads(completion.body)["choices"][0]
    assert answer == {"index": 0, "message": {"role": "assistant", "content": "The tool said: rain; noon"},
                      "logprobs": None, "finish_reason": "stop"}
    sent = last_request(server)["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][0] == {"type": "text", "text": "Calling get_weather and get_time."}
    assert [b["type"] for b in sent[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "rain"},
                                  {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "noon"}]


def test_streaming_tool_calls(server):
    body = {"model": "claude-sonnet-4-0", "stream": True, "tools": [WEATHER, TIME],
            "messages": [{"role": "user", "content": "Lisbon"}]}
    _, raw = drive(server.url, body)
    payloads = events(raw)
    deltas = [d for c in payloads[:-1] if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", [])]

    starts = [d for d in deltas if "id" in d]
    assert [(d["index"], d["function"]) for d in starts] == [(0, {"name": "get_weather", "arguments": ""}),
                                                            (1, {"name": "get_time", "arguments": ""})]
    assert all(set(d) == {"index", "function"} for d in deltas if "id" not in d)
    rebuilt = accumulate(payloads)["choices"][0]
    assert rebuilt["finish_reason"] == "tool_calls"
    assert rebuilt["message"]["content"] == "Calling get_weather and get_time."
    calls = rebuilt["message"]["tool_calls"]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Lisbon"}, {"zone": "Lisbon"}]
    assert [c["id"] for c in calls] == [d["id"] for d in starts]


@pytest.mark.parametrize(("extra", "finish", "content"), [
    ({"stop": ["there"]}, "stop", "Echo: hello "),
    ({"max_tokens": 2}, "length", "Echo: hello"),
])
def test_stop_reasons(server, extra, finish, content):
    body = {"model": "claude-sonnet-4-0", "messages": [{"role": "user", "content": "hello there"}], **extra}
    _, completion = drive(server.url, body)
    choice = orjson.loads(completion.body)["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == (finish, content)


@pytest.mark.parametrize(("model", "stream", "status", "type_", "code"), [
    ("error-400", False, 400, "invalid_request_error", "invalid_request_error"),
    ("error-429", False, 429, "rate_limit_error", "rate_limit_error"),
    ("error-529", True, 529, "server_error", "overloaded_error"),
])
def test_error_status_is_relayed(server, model, stream, status, type_, code):
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(UpstreamHTTPError) as caught:
        drive(server.url, body)
    assert caught.value.status == status
    error = orjson.loads(caught.value.body())["error"]
    assert (error["type"], error["code"], error["message"]) == (type_, code, f"Fake failure {model}")
    assert (b"request-id", b"req_fake") in caught.value.headers()


def test_key_falls_back_to_the_callers_authorization(server):
    body = {"model": "claude-sonnet-4-0", "messages": [{"role": "user", "content": "hi"}]}
    drive(server.url, body, api_key=None, auth="Bearer sk-ant-caller")
    assert last_request(server)["headers"]["x-api-key"] == "sk-ant-caller"

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
    assert payloads[-1] == {"error": {"message": "Overloaded", "type": "server_error", "param": None,
                                      "code": "overloaded_error"}}
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in payloads[:-1])


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


START = sse("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}}})
TEXT = (sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}})
        + sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "Hi"}}))
OVERLOADED = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
END = (sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": 3}})
       + sse("message_stop", {"type": "message_stop"}))


def translator() -> StreamTranslator:
    return StreamTranslator(make_call({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}))


def test_stream_error_before_any_chunk_is_raised_with_its_status():
    with pytest.raises(UpstreamHTTPError) as caught:
        translator().feed(sse("ping", {"type": "ping"}) + OVERLOADED)
    assert caught.value.status == 529
    assert orjson.loads(caught.value.body())["error"]["code"] == "overloaded_error"


def test_stream_that_stops_early_ends_with_an_error_event():
    stream = translator()
    out = stream.feed(START + TEXT)
    (tail,) = stream.finish()
    assert len(out) == 2
    assert orjson.loads(event_data(tail))["error"]["type"] == "server_error"


def test_stream_bytes_may_arrive_in_any_pieces():
    whole = START + TEXT + END
    stream = translator()
    out = [event for index in range(len(whole)) for event in stream.feed(whole[index:index + 1])]
    assert stream.closed and stream.finish() == []
    assert out[-1] == b"data: [DONE]\n\n"
    rebuilt = accumulate(events(b"".join(out)))
    assert (rebuilt["id"], rebuilt["model"]) == ("msg_1", "claude-x")
    assert rebuilt["choices"][0]["message"]["content"] == "Hi"
    assert rebuilt["usage"] == {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18,
                                "prompt_tokens_details": {"cached_tokens": 5}}


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

    assert asyncio.run(main()) == [{"id": "claude-sonnet-4-20250514", "object": "model", "owned_by": "anthropic",
                                    "created": 1747872000}]
