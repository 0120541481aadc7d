"""The gateway in front of an OpenAI-compatible upstream, driven through the official SDK."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.conftest import client_for


def test_chat_completion_is_relayed_and_recorded(gateway, client, upstream_requests):
    reply = client.chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "Hi there"}])

    assert reply.choices[0].message.content == "Echo: Hi there"
    assert reply.usage.total_tokens > 0
    [request] = gateway.rows("SELECT * FROM requests")
    [response] = gateway.rows("SELECT * FROM responses")
    assert request["model"] == "fake-gpt" and request["provider"] == "openai" and request["stream"] == 0
    assert json.loads(request["openai_request"])["messages"][0]["content"] == "Hi there"
    assert request["provider_request"] is None  # sent upstream byte for byte
    assert json.loads(request["qwen_request"]) == json.loads(request["openai_request"])
    assert response["request_id"] == request["id"] and response["session_id"] == request["session_id"]
    assert json.loads(response["openai_response"])["id"] == reply.id
    assert (response["prompt_tokens"], response["completion_tokens"], response["total_tokens"]) == (
        reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens)
    assert response["finish_reason"] == "stop" and response["error"] is None
    assert response["status_code"] == 200 and response["duration_ms"] >= 0
    # UUIDv7: time-ordered, so the recorder's unique indexes grow at their end.
    assert uuid.UUID(request["request_id"]).version == 7 and uuid.UUID(response["response_id"]).version == 7
    assert request["request_id"] < response["response_id"] or \
        request["request_id"][:13] == response["response_id"][:13]  # same millisecond: random order


def test_upstream_gets_its_own_key_never_the_clients(gateway, client, upstream_requests):
    client.chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "key check"}])

    assert upstream_requests[0]["headers"]["Authorization"] == "Bearer sk-upstream-secret"
    raw = b"".join(p.read_bytes() for p in gateway.db_path.parent.iterdir() if p.is_file())
    assert b"sk-upstream-secret" not in raw and b"sk-client-one" not in raw
    [request] = gateway.rows("SELECT api_key_hash FROM requests")
    assert request["api_key_hash"].startswith("sk-") and "client-one" not in request["api_key_hash"]


def test_streaming_relays_chunks_and_stores_a_synthesized_completion(gateway, client, upstream_requests):
    stream = client.chat.completions.create(model="fake-gpt", stream=True,
                                            messages=[{"role": "user", "content": "stream me please"}])
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream me please"
    # The gateway asked for usage on the client's behalf, and hid that extra chunk from it.
    assert upstream_requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)
    [request] = gateway.rows("SELECT * FROM requests")
    assert request["stream"] == 1 and json.loads(request["provider_request"])["stream_options"]["include_usage"]
    assert "stream_options" not in json.loads(request["openai_request"])
    [response] = gateway.rows("SELECT * FROM responses")
    stored = json.loads(response["openai_response"])
    assert stored["object"] == "chat.completion"
    assert stored["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert response["finish_reason"] == "stop" and response["total_tokens"] > 0
    assert response["provider_response"] is None and response["ttft_ms"] is not None


def test_streaming_client_that_asks_for_usage_gets_it(gateway, client):
    chunks = list(client.chat.completions.create(
        model="fake-gpt", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "usage please"}]))

    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    [response] = gateway.rows("SELECT total_tokens FROM responses")
    assert response["total_tokens"] == chunks[-1].usage.total_tokens


def test_tool_calls_round_trip(gateway, client, upstream_requests):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="fake-gpt", messages=messages, tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = client.chat.completions.create(model="fake-gpt", messages=messages, tools=tools, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "Tool said: 18C and sunny"

    streamed = list(client.chat.completions.create(model="fake-gpt", messages=messages[:1], tools=tools,
                                                   stream=True))
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in streamed if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(arguments) == {"city": "Paris"}
    rows = gateway.rows("SELECT finish_reason, openai_response FROM responses ORDER BY id")
    assert [r["finish_reason"] for r in rows] == ["tool_calls", "stop", "tool_calls"]
    synthesized = json.loads(rows[2]["openai_response"])["choices"][0]["message"]["tool_calls"]
    assert synthesized == [{"id": "call_fake_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert upstream_requests[1]["body"]["messages"][2]["tool_call_id"] == call.id


def test_n_response_format_and_unknown_fields_pass_through(gateway, client, upstream_requests):
    reply = client.chat.completions.create(
        model="fake-gpt", n=2, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "two please"}],
        extra_body={"vendor_flag": {"deep": [1, 2]}, "top_k": 5})

    assert len(reply.choices) == 2
    sent = upstream_requests[0]["body"]
    assert sent["n"] == 2 and sent["response_format"] == {"type": "json_object"}
    assert sent["vendor_flag"] == {"deep": [1, 2]} and sent["top_k"] == 5


def test_completions_embeddings_and_models(gateway, client):
    completion = client.completions.create(model="fake-gpt", prompt="Once upon")
    assert completion.choices[0].text == "Continued: Once upon"
    embedding = client.embeddings.create(model="fake-embed", input=["a", "b"])
    assert len(embedding.data) == 2
    assert "fake-gpt" in [m.id for m in client.models.list()]
    rows = gateway.rows("SELECT r.path, s.total_tokens FROM requests r JOIN responses s ON s.request_id = r.id "
                        "ORDER BY r.id")
    assert [r["path"] for r in rows] == ["/v1/completions", "/v1/embeddings"]
    assert all(r["total_tokens"] > 0 for r in rows)


def test_client_key_is_forwarded_when_no_upstream_key_is_configured(make_gateway, openai_upstream,
                                                                    upstream_requests):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1")
    client_for(gateway, api_key="sk-callers-own").chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "passthrough"}])
    assert upstream_requests[0]["headers"]["Authorization"] == "Bearer sk-callers-own"
    raw = gateway.db_path.read_bytes() + gateway.db_path.with_name("chatledger.db-wal").read_bytes()
    assert b"sk-callers-own" not in raw


def test_response_headers_name_the_recorded_request(gateway):
    response = httpx.post(gateway.url + "/v1/chat/completions",
                          json={"model": "fake-gpt", "messages": [{"role": "user", "content": "id?"}]})
    request_id = response.headers["x-chatledger-request-id"]
    assert response.headers["x-request-id"].startswith("req_")  # upstream's own header relayed
    assert gateway.rows("SELECT COUNT(*) AS n FROM requests WHERE request_id = ?", request_id)[0]["n"] == 1
