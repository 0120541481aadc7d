"""The gateway in front of Anthropic's Messages API, driven through the official OpenAI SDK.

Each test checks what the client sees and what the recorder wrote: the Anthropic body beside the
OpenAI one, Anthropic's raw answer beside the translated one, and the usage, finish reason and
timing taken from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import client_for
from tests.fakes import anthropic_server
from tests.fakes.fixtures import headers_of, only_exchange, stored_bytes, watch_stream_ends
from tests.fakes.server import ServerThread

KEY = "sk-ant-secret-key"
MODEL = "claude-sonnet-4-20250514"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}


@pytest.fixture(scope="session")
def anthropic_upstream() -> Iterator[ServerThread]:
    with ServerThread(anthropic_server.make_app()) as server:
        yield server


@pytest.fixture
def sent(anthropic_upstream: ServerThread) -> list[dict[str, Any]]:
    """What the fake Anthropic API received in this test, oldest first."""
    log = anthropic_upstream.app[anthropic_server.REQUESTS]
    log.clear()
    return log


@pytest.fixture
def gateway(make_gateway, anthropic_upstream, sent):
    # Only ANTHROPIC_API_KEY set: Anthropic is the active provider and takes every model name.
    return make_gateway(anthropic_api_key=KEY, anthropic_base_url=anthropic_upstream.url)


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return client_for(gateway)


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_completion_is_translated_and_both_dialects_recorded(gateway, client, sent):
    reply = client.chat.completions.create(
        model=MODEL, temperature=0.2, stop=["zzz"], user="user-7",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}])

    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "Echo: Hi there"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason == "stop"
    # Anthropic counts the cached system prompt apart; OpenAI's prompt_tokens holds both.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (8, 3, 11)
    assert reply.usage.prompt_tokens_details.cached_tokens == 2

    [upstream] = sent
    assert upstream["path"] == "/v1/messages"
    assert upstream["body"] == {"model": MODEL, "max_tokens": 4096, "system": "Be brief.",
                                "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}],
                                "stop_sequences": ["zzz"], "temperature": 0.2, "metadata": {"user_id": "user-7"}}

    request, response = only_exchange(gateway)
    assert request["provider"] == "anthropic" and request["model"] == MODEL
    assert request["upstream_model"] == MODEL and request["stream"] == 0
    openai_request = json.loads(request["openai_request"])
    assert openai_request["messages"][0] == {"role": "system", "content": "Be brief."}
    assert openai_request["stop"] == ["zzz"] and "max_tokens" not in openai_request
    # What was recorded as sent is what Anthropic got, and it is not the OpenAI body.
    assert json.loads(request["provider_request"]) == upstream["body"]
    assert request["provider_request"] != request["openai_request"]
    assert request["qwen_request"] == request["provider_request"]

    raw = json.loads(response["provider_response"])
    assert raw["type"] == "message" and raw["stop_reason"] == "end_turn"
    assert raw["content"] == [{"type": "text", "text": "Echo: Hi there"}]
    assert raw["usage"] == {"input_tokens": 6, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2,
                            "output_tokens": 3}
    assert response["qwen_response"] == response["provider_response"]
    assert json.loads(response["openai_response"]) == reply.model_dump(exclude_unset=True)
    assert reply.id == raw["id"] and response["upstream_id"] == raw["id"]
    usage = raw["usage"]
    assert response["prompt_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert response["completion_tokens"] == usage["output_tokens"]
    assert response["total_tokens"] == response["prompt_tokens"] + response["completion_tokens"]
    assert response["finish_reason"] == "stop" and response["error"] is None
    assert response["status_code"] == 200 and response["duration_ms"] >= 0
    assert response["request_id"] == request["id"]


def test_consecutive_and_developer_messages_are_merged_for_anthropic(gateway, client, sent):
    reply = client.chat.completions.create(model=MODEL, max_tokens=2, messages=[
        {"role": "developer", "content": "Rule one."}, {"role": "system", "content": "Rule two."},
        {"role": "user", "content": "first"}, {"role": "user", "content": "one two three"}])

    # Two user messages became one turn (the fake reads its text blocks run together); max_tokens=2 cut
    # the answer short.
    assert reply.choices[0].message.content == "Echo: firstone"
    assert reply.choices[0].finish_reason == "length"
    body = sent[0]["body"]
    assert body["system"] == "Rule one.\n\nRule two." and body["max_tokens"] == 2
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "first"},
                                                             {"type": "text", "text": "one two three"}]}]
    request, response = only_exchange(gateway)
    assert json.loads(request["provider_request"]) == body
    assert response["finish_reason"] == "length"
    assert json.loads(response["provider_response"])["stop_reason"] == "max_tokens"


def test_streaming_relays_chunks_and_records_anthropic_events(gateway, client, sent):
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": "stream me please"}]))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Echo:", " stream", " me", " please"]  # one chunk a text_delta
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks)  # the usage chunk was not asked for, so it is hidden
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("msg_")

    [upstream] = sent
    assert upstream["body"]["stream"] is True
    request, response = only_exchange(gateway)
    assert request["stream"] == 1 and json.loads(request["provider_request"]) == upstream["body"]
    assert json.loads(request["openai_request"])["stream"] is True
    assert request["qwen_request"] == request["provider_request"]

    stored = json.loads(response["openai_response"])
    assert stored["object"] == "chat.completion" and stored["id"] == chunks[0].id
    assert stored["choices"][0]["message"] == {"role": "assistant", "content": "Echo: stream me please"}
    assert stored["choices"][0]["finish_reason"] == "stop"
    assert stored["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert (response["prompt_tokens"], response["completion_tokens"], response["total_tokens"]) == (7, 4, 11)
    assert response["finish_reason"] == "stop" and response["error"] is None and response["status_code"] == 200
    assert response["upstream_id"] == chunks[0].id
    assert response["ttft_ms"] is not None and response["duration_ms"] >= response["ttft_ms"]
    # Anthropic's own SSE bytes are kept beside the OpenAI completion.
    raw = response["provider_response"]
    assert raw.startswith("event: message_start\ndata: ")
    assert raw.count("event: content_block_delta") == 4 and raw.rstrip().endswith('{"type":"message_stop"}')
    assert '"stop_reason":"end_turn"' in raw


def test_streaming_client_that_asks_for_usage_gets_it(gateway, client):
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "usage please"}]))

    assert content_of(chunks) == "Echo: usage please"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 3, 11)
    assert usage.prompt_tokens_details.cached_tokens == 2
    _, response = only_exchange(gateway)
    assert (response["prompt_tokens"], response["total_tokens"]) == (8, 11)


def test_tool_calls_round_trip(gateway, client, sent):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])

    message = first.choices[0].message
    [call] = message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and message.content == "Calling get_weather."
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("toolu_")
    assert json.loads(call.function.arguments) == {"city": "Weather in Paris?"}
    assert sent[0]["body"]["tools"] == [{"name": "get_weather", "description": "Weather in a city",
                                         "input_schema": WEATHER["function"]["parameters"]}]
    assert "tool_choice" not in sent[0]["body"]

    messages += [message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "The tool said: 18C and sunny"
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.tool_calls is None

    # The assistant's call became a tool_use block, the tool's answer a tool_result in a user turn.
    assert sent[1]["body"]["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Calling get_weather."},
            {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Weather in Paris?"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]}]

    rows = gateway.rows("SELECT r.provider_request, s.finish_reason, s.openai_response, s.provider_response "
                        "FROM requests r JOIN responses s ON s.request_id = r.id ORDER BY r.id")
    assert [r["finish_reason"] for r in rows] == ["tool_calls", "stop"]
    assert json.loads(rows[1]["provider_request"]) == sent[1]["body"]
    assert json.loads(rows[0]["openai_response"])["choices"][0]["message"]["tool_calls"] == [call.model_dump()]
    raw = json.loads(rows[0]["provider_response"])
    assert raw["stop_reason"] == "tool_use" and raw["content"][1]["id"] == call.id


def test_parallel_tool_calls_and_their_results_in_one_turn(gateway, client, sent):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather and time in Oslo?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME])

    calls = first.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {"zone": "Weather and time in Oslo?"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": calls[0].id, "content": "cold"},
                 {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME])

    assert second.choices[0].message.content == "The tool said: cold; noon"
    assert sent[1]["body"]["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "cold"},
        {"type": "tool_result", "tool_use_id": calls[1].id, "content": "noon"}]}

    single = client.chat.completions.create(model=MODEL, messages=messages[:1], tools=[WEATHER, TIME],
                                            parallel_tool_calls=False,
                                            tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in single.choices[0].message.tool_calls] == ["get_time"]
    assert sent[2]["body"]["tool_choice"] == {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}
    assert [r["finish_reason"] for r in gateway.rows("SELECT finish_reason FROM responses ORDER BY id")] == [
        "tool_calls", "stop", "tool_calls"]


def test_streamed_tool_call_is_assembled_from_deltas(gateway, client):
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Oslo?"}]))

    assert content_of(chunks) == "Calling get_weather."
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 3  # the tool_use block's start, then its input JSON in two halves
    assert deltas[0].id.startswith("toolu_") and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.index == 0 for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Weather in Oslo?"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    request, response = only_exchange(gateway)
    assert json.loads(request["provider_request"])["tool_choice"] == {"type": "any"}
    assert response["finish_reason"] == "tool_calls"
    message = json.loads(response["openai_response"])["choices"][0]["message"]
    assert message["content"] == "Calling get_weather."
    assert message["tool_calls"] == [{"id": deltas[0].id, "type": "function",
                                      "function": {"name": "get_weather", "arguments": arguments}}]
    assert '"type":"input_json_delta"' in response["provider_response"]


@pytest.mark.parametrize(("model", "exception", "status", "kind", "error_type"), [
    ("error-400", openai.BadRequestError, 400, "invalid_request_error", "invalid_request_error"),
    ("error-401", openai.AuthenticationError, 401, "authentication_error", "authentication_error"),
    ("error-429", openai.RateLimitError, 429, "rate_limit_error", "rate_limit_error"),
    ("error-529", openai.InternalServerError, 529, "overloaded_error", "server_error"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_is_relayed_as_an_openai_error_and_recorded(gateway, client, model, exception, status,
                                                                    kind, error_type, stream):
    with pytest.raises(exception) as caught:
        result = client.chat.completions.create(model=model, stream=stream,
                                                messages=[{"role": "user", "content": "hi"}])
        if stream:
            list(result)

    assert caught.value.status_code == status
    assert caught.value.body["message"] == f"Fake failure {model}"
    assert caught.value.body["code"] == kind and caught.value.body["type"] == error_type
    assert caught.value.response.headers["request-id"] == "req_fake"  # Anthropic's own header relayed
    request, response = only_exchange(gateway)
    assert request["provider"] == "anthropic" and request["stream"] == int(stream)
    assert json.loads(request["provider_request"])["model"] == model
    assert response["status_code"] == status and response["error"] == f"Fake failure {model}"
    assert response["finish_reason"] == "error" and response["duration_ms"] >= 0
    assert json.loads(response["openai_response"])["error"]["message"] == f"Fake failure {model}"
    # ... and Anthropic's own error body is kept beside the translation.
    assert json.loads(response["provider_response"])["error"]["type"] == kind


def test_mid_stream_error_ends_the_stream_with_an_error_event(gateway, client):
    received = []
    stream = client.chat.completions.create(model="error-midstream", stream=True,
                                            messages=[{"role": "user", "content": "alpha beta gamma"}])
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)

    assert content_of(received) == "Echo:"  # the one text_delta before Anthropic failed
    assert caught.value.message == "Overloaded"
    assert caught.value.body["code"] == "overloaded_error" and caught.value.body["type"] == "server_error"
    # The error event, like [DONE], went out only once the exchange was committed.
    request, response = only_exchange(gateway)
    assert request["stream"] == 1 and request["provider"] == "anthropic"
    assert response["error"] == "Overloaded" and response["finish_reason"] == "error"
    assert response["status_code"] == 200  # the stream had already started
    assert json.loads(response["openai_response"])["choices"][0]["message"]["content"] == "Echo:"
    raw = response["provider_response"]
    assert raw.startswith("event: message_start") and "event: error" in raw and "message_stop" not in raw


@pytest.mark.parametrize("writer_ack", ["commit", "journal"])
def test_stream_end_is_sent_only_once_the_exchange_is_recorded(gateway, client, writer_ack):
    ends = watch_stream_ends(gateway)
    list(client.chat.completions.create(model=MODEL, stream=True,
                                        messages=[{"role": "user", "content": "read your writes"}]))

    # [DONE] was held back until the response was durable: committed (ack=commit), or in the journal.
    assert [(kind, journaled) for kind, _, journaled in ends] == [("done", 1)]
    if writer_ack == "commit":
        assert [committed for _, committed, _ in ends] == [1]


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


def test_api_key_reaches_anthropic_and_is_never_stored(gateway, client, sent):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "key check"}])
    list(client.chat.completions.create(model=MODEL, stream=True,
                                        messages=[{"role": "user", "content": "streamed key check"}]))

    assert len(sent) == 2
    for upstream in sent:
        headers = headers_of(upstream)
        assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in headers  # Anthropic takes its key in x-api-key only
        assert "sk-client-one" not in json.dumps(headers)  # the caller's key stays with the gateway
    raw = stored_bytes(gateway)
    assert b"streamed key check" in raw  # we did read the records
    assert KEY.encode() not in raw and b"sk-client-one" not in raw


def test_requests_anthropic_cannot_serve_are_refused_and_recorded(gateway, client, sent):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="no vectors here")
    assert caught.value.body["code"] == "unsupported_endpoint"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "two"}])
    assert caught.value.body["param"] == "n"

    assert sent == []  # neither reached Anthropic
    rows = gateway.rows("SELECT status_code, error, finish_reason FROM responses ORDER BY id")
    assert [(r["status_code"], r["finish_reason"]) for r in rows] == [(400, "error"), (400, "error")]
    assert "n=1" in rows[1]["error"]
