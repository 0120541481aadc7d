"""Bad input and failing upstreams: OpenAI-style errors with the right status, each one recorded."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import client_for
from tests.fakes.server import free_port


def _post(gateway, body: bytes | dict, **kwargs) -> httpx.Response:
    if isinstance(body, dict):
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30, **kwargs)
    return httpx.post(gateway.url + "/v1/chat/completions", content=body, timeout=30,
                      headers={"content-type": "application/json"}, **kwargs)


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    assert "Traceback" not in response.text
    return error


def _last_response(gateway) -> dict:
    return dict(gateway.rows("SELECT * FROM responses ORDER BY id DESC LIMIT 1")[0])


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    ({"messages": [{"role": "user", "content": "x"}]}, "missing_required_parameter"),
    ({"model": "fake-gpt"}, "missing_required_parameter"),
    ({"model": "fake-gpt", "messages": []}, "missing_required_parameter"),
])
def test_bad_requests_answer_400_and_are_recorded(gateway, body, code):
    error = _assert_openai_error(_post(gateway, body), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == code
    response = _last_response(gateway)
    assert response["status_code"] == 400 and response["error"] and response["finish_reason"] == "error"
    assert response["duration_ms"] is not None
    [request] = gateway.rows("SELECT openai_request FROM requests")
    if isinstance(body, bytes):
        assert request["openai_request"].encode() == body  # even a body we could not parse is kept
    else:
        assert json.loads(request["openai_request"]) == body


def test_oversized_body_answers_413(make_gateway, openai_upstream):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1", max_body_size=1000)
    big = {"model": "fake-gpt", "messages": [{"role": "user", "content": "x" * 5000}]}
    error = _assert_openai_error(_post(gateway, big), 413)
    assert error["code"] == "request_too_large"
    assert _last_response(gateway)["status_code"] == 413


def test_unknown_model_answers_404_when_no_provider_takes_it(make_gateway, openai_upstream, tmp_path):
    config = tmp_path / "chatledger.yaml"
    config.write_text(f"""
providers:
  up: {{type: openai, base_url: "{openai_upstream.url}/v1", api_key: "${{UP_KEY:-none}}"}}
models:
  known: {{provider: up, model: fake-gpt}}
active_provider: null
""")
    gateway = make_gateway(chatledger_config=config)
    client = client_for(gateway)
    assert client.chat.completions.create(
        model="known", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content == "Echo: hi"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"
    assert _last_response(gateway)["status_code"] == 404


def test_upstream_error_status_and_body_are_relayed(gateway, client):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="error-429", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "fake_429" and caught.value.body["message"] == "fake upstream error 429"
    assert caught.value.response.headers["retry-after"] == "1"
    response = _last_response(gateway)
    assert response["status_code"] == 429 and response["error"] == "fake upstream error 429"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="error-500", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert _last_response(gateway)["status_code"] == 500


def test_connection_refused_answers_502(make_gateway):
    gateway = make_gateway(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", openai_api_key="k")
    error = _assert_openai_error(_post(gateway, {"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                                 502)
    assert error["code"] == "upstream_unreachable"
    assert _last_response(gateway)["status_code"] == 502


def test_upstream_timeout_answers_504(make_gateway, openai_upstream):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1", openai_api_key="k",
                           upstream_read_timeout=0.3)
    error = _assert_openai_error(_post(gateway, {"model": "slow", "messages": [{"role": "user", "content": "x"}]}),
                                 504)
    assert error["type"] == "timeout_error"
    response = _last_response(gateway)
    assert response["status_code"] == 504 and response["duration_ms"] >= 250


def test_unknown_path_and_wrong_method(gateway):
    error = _assert_openai_error(httpx.get(gateway.url + "/v1/nothing-here"), 404)
    assert error["code"] == "unknown_url"
    _assert_openai_error(httpx.get(gateway.url + "/v1/chat/completions"), 405)
