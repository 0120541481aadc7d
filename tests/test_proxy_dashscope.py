"""The gateway in front of DashScope's native API, driven through the official OpenAI SDK.

Each test checks what the client sees and what the recorder wrote: the DashScope body beside the
OpenAI one, DashScope's raw answer beside the translated one, and the usage, finish reason and
timing taken from them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import client_for
from tests.fakes import dashscope_server
from tests.fakes.fixtures import headers_of, only_exchange, stored_bytes, watch_stream_ends
from tests.fakes.server import ServerThread

KEY = "dk-secret"
TEXT_PATH = "/api/v1/services/aigc/text-generation/generation"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="session")
def dashscope_upstream() -> Iterator[ServerThread]:
    with ServerThread(dashscope_server.make_app()) as server:
        yield server


@pytest.fixture
def sent(dashscope_upstream: ServerThread) -> list[dict[str, Any]]:
    """What the fake DashScope received in this test, oldest first."""
    log = dashscope_upstream.app[dashscope_server.REQUESTS]
    log.clear()
    return log


@pytest.fixture
def gateway(make_gateway, dashscope_upstream, sent):
    # Only DASHSCOPE_API_KEY set: DashScope is the active provider and takes every model name.
    return make_gateway(dashscope_api_key=KEY, dashscope_base_url=dashscope_upstream.url)


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return client_for(gateway)


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_completion_is_translated_and_both_dialects_recorded(gateway, client, sent):
    reply = client.chat.completions.create(
        model="qwen-plus", temperature=0.5, max_completion_tokens=50,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}],
        extra_body={"enable_search": True})

    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Echo: Hi there"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason == "stop"
    # The fake counts a token a word, plus 3 a message.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 3, 14)

    [upstream] = sent
    assert upstream["path"] == TEXT_PATH
    assert upstream["body"] == {
        "model": "qwen-plus",
        "input": {"messages": [{"role": "system", "content": "You are terse."},
                               {"role": "user", "content": "Hi there"}]},
        "parameters": {"temperature": 0.5, "max_tokens": 50, "enable_search": True, "result_format": "message"}}
    assert "X-DashScope-SSE" not in upstream["headers"]

    request, response = only_exchange(gateway)
    assert request["provider"] == "dashscope" and request["model"] == "qwen-plus"
    assert request["upstream_model"] == "qwen-plus" and request["stream"] == 0
    assert request["path"] == "/v1/chat/completions"
    openai_request = json.loads(request["openai_request"])
    assert openai_request["messages"][1] == {"role": "user", "content": "Hi there"}
    assert openai_request["max_completion_tokens"] == 50 and "input" not in openai_request
    # What was recorded as sent is what DashScope got, and it is not the OpenAI body.
    assert json.loads(request["provider_request"]) == upstream["body"]
    assert request["provider_request"] != request["openai_request"]
    assert request["qwen_request"] == request["provider_request"]

    raw = json.loads(response["provider_response"])
    assert raw["output"]["choices"][0]["message"] == {"role": "assistant", "content": "Echo: Hi there"}
    assert raw["usage"] == {"input_tokens": 11, "output_tokens": 3, "total_tokens": 14}
    assert response["qwen_response"] == response["provider_response"]
    assert json.loads(response["openai_response"]) == reply.model_dump(exclude_unset=True)
    assert reply.id == "chatcmpl-" + raw["request_id"] and response["upstream_id"] == reply.id
    assert (response["prompt_tokens"], response["completion_tokens"], response["total_tokens"]) == (
        raw["usage"]["input_tokens"], raw["usage"]["output_tokens"], raw["usage"]["total_tokens"])
    assert response["finish_reason"] == "stop" and response["error"] is None
    assert response["status_code"] == 200 and response["duration_ms"] >= 0
    assert response["request_id"] == request["id"]


def test_length_finish_reason_is_translated_and_recorded(gateway, client):
    reply = client.chat.completions.create(model="qwen-plus", max_tokens=2,
                                           messages=[{"role": "user", "content": "one two three"}])

    assert reply.choices[0].message.content == "Echo: one"
    assert reply.choices[0].finish_reason == "length"
    _, response = only_exchange(gateway)
    assert response["finish_reason"] == "length" and response["completion_tokens"] == 2


def test_streaming_relays_chunks_and_records_dashscope_events(gateway, client, sent):
    chunks = list(client.chat.completions.create(
        model="qwen-plus", stream=True, messages=[{"role": "user", "content": "stream me please"}]))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Echo:", " stream", " me", " please"]  # one chunk a DashScope event
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks)  # the usage chunk was not asked for, so it is hidden
    assert len({c.id for c in chunks}) == 1

    [upstream] = sent
    assert headers_of(upstream)["x-dashscope-sse"] == "enable"
    assert upstream["body"]["parameters"] == {"result_format": "message", "incremental_output": True}
    request, response = only_exchange(gateway)
    assert request["stream"] == 1 and json.loads(request["provider_request"]) == upstream["body"]
    assert json.loads(request["openai_request"])["stream"] is True
    assert request["qwen_request"] == request["provider_request"]

    stored = json.loads(response["openai_response"])
    assert stored["object"] == "chat.completion" and stored["id"] == chunks[0].id
    assert stored["choices"][0]["message"] == {"role": "assistant", "content": "Echo: stream me please"}
    assert stored["choices"][0]["finish_reason"] == "stop"
    assert stored["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert (response["prompt_tokens"], response["completion_tokens"], response["total_tokens"]) == (6, 4, 10)
    assert response["finish_reason"] == "stop" and response["error"] is None and response["status_code"] == 200
    assert response["ttft_ms"] is not None and response["duration_ms"] >= response["ttft_ms"]
    # DashScope's own SSE bytes are kept beside the OpenAI completion.
    raw = response["provider_response"]
    assert raw.count(":HTTP_STATUS/200") == 5 and raw.count("event:result") == 5
    assert raw.startswith("id:1\nevent:result\n:HTTP_STATUS/200\ndata:")
    assert '"finish_reason":"stop"' in raw


def test_streaming_client_that_asks_for_usage_gets_it(gateway, client):
    chunks = list(client.chat.completions.create(
        model="qwen-plus", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "usage please"}]))

    assert content_of(chunks) == "Echo: usage please"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 3)
    _, response = only_exchange(gateway)
    assert response["total_tokens"] == chunks[-1].usage.total_tokens == 8


def test_tool_calls_round_trip(gateway, client, sent):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="qwen-plus", messages=messages, tools=TOOLS)

    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and first.choices[0].message.content is None
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Weather in Paris?"}
    assert sent[0]["body"]["parameters"]["tools"] == TOOLS

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = client.chat.completions.create(model="qwen-plus", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "The tool said: 18C and sunny"
    assert second.choices[0].finish_reason == "stop"

    # The assistant's call and the tool's result went to DashScope in its own message format.
    history = sent[1]["body"]["input"]["messages"]
    assert history[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": "get_weather", "arguments": call.function.arguments}}]}
    assert history[2] == {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}

    rows = gateway.rows("SELECT r.provider_request, s.finish_reason, s.openai_response, s.provider_response "
                        "FROM requests r JOIN responses s ON s.request_id = r.id ORDER BY r.id")
    assert [r["finish_reason"] for r in rows] == ["tool_calls", "stop"]
    assert json.loads(rows[1]["provider_request"]) == sent[1]["body"]
    assert json.loads(rows[0]["openai_response"])["choices"][0]["message"]["tool_calls"] == [
        call.model_dump()]
    raw_call = json.loads(rows[0]["provider_response"])["output"]["choices"][0]["message"]["tool_calls"][0]
    assert raw_call["id"] == call.id and raw_call["function"]["arguments"] == call.function.arguments


def test_streamed_tool_call_is_assembled_from_deltas(gateway, client):
    chunks = list(client.chat.completions.create(
        model="qwen-plus", stream=True, tools=TOOLS, tool_choice="auto",
        messages=[{"role": "user", "content": "Weather in Oslo?"}]))

    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 2  # DashScope sent the arguments in two halves
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert deltas[1].id is None and deltas[1].function.name is None
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Weather in Oslo?"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    _, response = only_exchange(gateway)
    assert response["finish_reason"] == "tool_calls"
    message = json.loads(response["openai_response"])["choices"][0]["message"]
    assert message["tool_calls"] == [{"id": deltas[0].id, "type": "function",
                                      "function": {"name": "get_weather", "arguments": arguments}}]
    assert response["provider_response"].count('"tool_calls"') >= 2


@pytest.mark.parametrize(("model", "exception", "status", "code"), [
    ("error-400", openai.BadRequestError, 400, "InvalidParameter"),
    ("error-401", openai.AuthenticationError, 401, "InvalidApiKey"),
    ("error-429", openai.RateLimitError, 429, "Throttling.RateQuota"),
    ("error-503", openai.InternalServerError, 503, "ModelServiceUnavailable"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_is_relayed_as_an_openai_error_and_recorded(gateway, client, model, exception, status,
                                                                    code, stream):
    with pytest.raises(exception) as caught:
        result = client.chat.completions.create(model=model, stream=stream,
                                                messages=[{"role": "user", "content": "hi"}])
        if stream:
            list(result)

    assert caught.value.status_code == status
    assert caught.value.body["message"] == f"Fake failure {model}" and caught.value.body["code"] == code
    assert caught.value.body["type"]
    request, response = only_exchange(gateway)
    assert request["provider"] == "dashscope" and request["stream"] == int(stream)
    assert json.loads(request["provider_request"])["model"] == model
    assert response["status_code"] == status and response["error"] == f"Fake failure {model}"
    assert response["finish_reason"] == "error" and response["duration_ms"] >= 0
    assert json.loads(response["openai_response"])["error"]["message"] == f"Fake failure {model}"
    # ... and DashScope's own error body, request_id and all, is kept beside the translation.
    native = response["provider_response"]
    assert native and json.loads(native.split("data:")[-1] if stream else native)["code"] == code


def test_mid_stream_error_ends_the_stream_with_an_error_event(gateway, client):
    received = []
    stream = client.chat.completions.create(model="error-midstream", stream=True,
                                            messages=[{"role": "user", "content": "alpha beta gamma"}])
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)

    assert content_of(received) == "Echo: alpha"  # the two events before DashScope failed
    assert caught.value.message == "Fake failure mid-stream"
    assert caught.value.body["code"] == "InternalError" and caught.value.body["type"] == "server_error"
    # The error event, like [DONE], went out only once the exchange was committed.
    request, response = only_exchange(gateway)
    assert request["stream"] == 1 and request["provider"] == "dashscope"
    assert response["error"] == "Fake failure mid-stream" and response["finish_reason"] == "error"
    assert response["status_code"] == 200  # the stream had already started
    stored = json.loads(response["openai_response"])
    assert stored["choices"][0]["message"]["content"] == "Echo: alpha"
    assert "event:error\n:HTTP_STATUS/500" in response["provider_response"]
    assert response["provider_response"].count("event:result") == 2


@pytest.mark.parametrize("writer_ack", ["commit", "journal"])
def test_stream_end_is_sent_only_once_the_exchange_is_recorded(gateway, client, writer_ack):
    ends = watch_stream_ends(gateway)
    list(client.chat.completions.create(model="qwen-plus", stream=True,
                                        messages=[{"role": "user", "content": "read your writes"}]))

    # [DONE] was held back until the response was durable: committed (ack=commit), or in the journal.
    assert [(kind, journaled) for kind, _, journaled in ends] == [("done", 1)]
    if writer_ack == "commit":
        assert [committed for _, committed, _ in ends] == [1]
    assert gateway.count("responses") == 1


@pytest.mark.parametrize("writer_ack", ["commit", "journal"])
def test_mid_stream_error_event_is_sent_only_once_the_exchange_is_recorded(gateway, client, writer_ack):
    ends = watch_stream_ends(gateway)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="error-midstream", stream=True,
                                            messages=[{"role": "user", "content": "alpha beta gamma"}]))

    # The error event, too, waited for the response to be durable.
    assert [(kind, journaled) for kind, _, journaled in ends] == [("error", 1)]
    if writer_ack == "commit":
        assert [committed for _, committed, _ in ends] == [1]


def test_api_key_reaches_dashscope_and_is_never_stored(gateway, client, sent):
    client.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "key check"}])
    list(client.chat.completions.create(model="qwen-plus", stream=True,
                                        messages=[{"role": "user", "content": "streamed key check"}]))
    client.embeddings.create(model="text-embedding-v3", input="embedded key check")

    assert len(sent) == 3
    for upstream in sent:
        headers = headers_of(upstream)
        assert headers["authorization"] == f"Bearer {KEY}"
        assert "sk-client-one" not in json.dumps(headers)  # the caller's key stays with the gateway
    raw = stored_bytes(gateway)
    assert b"streamed key check" in raw and b"embedded key check" in raw  # we did read the records
    assert KEY.encode() not in raw and b"sk-client-one" not in raw


def fake_vector(text: str, dimension: int = 8) -> list[float]:
    """The fake's embedding for `text` (a function of its hash)."""
    seed = hashlib.sha256(text.encode()).digest() * (dimension // 16 + 1)
    return [v / 32768 for v in struct.unpack(f"<{dimension}h", seed[: dimension * 2])]


def test_embeddings_are_translated_and_base64_encoded_for_the_sdk(gateway, client, sent):
    reply = client.embeddings.create(model="text-embedding-v3", input=["first text", "second one here"])

    # The SDK asked for base64 (its default) and decoded it: values the fake chose survive float32 exactly.
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.data[0].embedding == fake_vector("first text")
    assert reply.data[1].embedding == fake_vector("second one here")
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 5
    [upstream] = sent
    assert upstream["path"] == "/api/v1/services/embeddings/text-embedding/text-embedding"
    assert upstream["body"] == {"model": "text-embedding-v3", "input": {"texts": ["first text", "second one here"]}}

    request, response = only_exchange(gateway)
    assert request["path"] == "/v1/embeddings" and request["provider"] == "dashscope"
    assert json.loads(request["openai_request"])["encoding_format"] == "base64"
    assert json.loads(request["provider_request"]) == upstream["body"]
    assert request["qwen_request"] == request["provider_request"]
    stored = json.loads(response["openai_response"])
    assert isinstance(stored["data"][0]["embedding"], str)  # as the client got it
    assert json.loads(response["provider_response"])["output"]["embeddings"][0]["embedding"] == fake_vector(
        "first text")
    assert (response["prompt_tokens"], response["total_tokens"]) == (5, 5)
    assert response["status_code"] == 200 and response["error"] is None


def test_embeddings_as_floats_and_with_dimensions(gateway, client, sent):
    reply = client.embeddings.create(model="text-embedding-v3", input="short", dimensions=16,
                                     encoding_format="float")

    assert reply.data[0].embedding == fake_vector("short", 16)
    assert sent[0]["body"]["parameters"] == {"dimension": 16}


def test_image_messages_go_to_the_multimodal_endpoint(gateway, client, sent):
    reply = client.chat.completions.create(model="qwen-vl-plus", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])

    assert reply.choices[0].message.content == "Echo: What is this? (with 1 image)"
    assert sent[0]["path"] == "/api/v1/services/aigc/multimodal-generation/generation"
    assert sent[0]["body"]["input"]["messages"] == [
        {"role": "user", "content": [{"text": "What is this?"}, {"image": "https://example.com/cat.png"}]}]
    request, response = only_exchange(gateway)
    assert json.loads(request["provider_request"]) == sent[0]["body"]
    assert json.loads(response["provider_response"])["output"]["choices"][0]["message"]["content"] == [
        {"text": "Echo: What is this? (with 1 image)"}]
