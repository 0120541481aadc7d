"""/v1/responses, /v1/responses/stats and /v1/requests/{id}/response through the real gateway."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import client_for
from tests.test_api_sessions import assert_error, chat, get

SUMMARY_FIELDS = {"id", "response_id", "request_id", "session_id", "timestamp", "duration_ms", "ttft_ms",
                  "prompt_tokens", "completion_tokens", "total_tokens", "finish_reason", "error", "status_code",
                  "parent_id", "upstream_id", "created_at"}
BODIES = {"openai_response", "provider_response", "qwen_response"}


@pytest.fixture
def recorded(make_gateway):
    gateway = make_gateway()
    chat(gateway, "Plan a trip")
    chat(gateway, "Plan a trip", "Where to?", "Paris")
    chat(gateway, "Write a haiku", key="sk-bob", model="mock-2")
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      json={"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}) as s:
        assert s.status_code == 200 and "[DONE]" in s.read().decode()
    return gateway


def test_list_shape_and_values(recorded):
    body = get(recorded, "/v1/responses")
    rows = recorded.rows("SELECT * FROM responses ORDER BY timestamp DESC, id DESC")

    assert (body["object"], body["total"], body["limit"], body["offset"], body["next_cursor"]) == (
        "list", 4, 50, 0, None)
    for item, row in zip(body["data"], rows, strict=True):
        assert set(item) == SUMMARY_FIELDS
        assert item == {k: row[k] for k in SUMMARY_FIELDS}
    assert all(r["total_tokens"] > 0 and r["finish_reason"] == "stop" for r in body["data"])

    full = get(recorded, "/v1/responses", include_bodies="true")["data"]
    assert all(set(r) == SUMMARY_FIELDS | BODIES for r in full)
    assert [r["openai_response"] for r in full] == [row["openai_response"] for row in rows]


def test_detail_by_id_or_uuid(recorded):
    [row] = recorded.rows("SELECT * FROM responses ORDER BY id LIMIT 1")
    by_id = get(recorded, f"/v1/responses/{row['id']}")

    assert by_id == get(recorded, f"/v1/responses/{row['response_id']}")
    assert set(by_id) == SUMMARY_FIELDS | BODIES
    completion = json.loads(by_id["openai_response"])
    assert completion["choices"][0]["message"]["content"].endswith("You said: Plan a trip")
    assert by_id["provider_response"] is None and by_id["qwen_response"] == by_id["openai_response"]
    assert by_id["total_tokens"] == completion["usage"]["total_tokens"] == row["total_tokens"]


def test_response_of_a_request(recorded):
    [row] = recorded.rows("SELECT r.id, r.request_id, s.id AS response_row FROM requests r "
                          "JOIN responses s ON s.request_id = r.id ORDER BY r.id DESC LIMIT 1")
    expected = get(recorded, f"/v1/responses/{row['response_row']}")

    assert get(recorded, f"/v1/requests/{row['id']}/response") == expected
    assert get(recorded, f"/v1/requests/{row['request_id']}/response") == expected
    assert expected["request_id"] == row["id"] and expected["ttft_ms"] is not None  # the streamed one


@pytest.mark.parametrize("ref", ["999", "99999999999999999999999", "5b0e4a8e-0000-4000-8000-000000000000"])
def test_unknown_response_is_404(recorded, ref):
    assert assert_error(httpx.get(f"{recorded.url}/v1/responses/{ref}"), 404)["code"] == "response_not_found"


def test_stats_add_up_every_response(recorded):
    body = get(recorded, "/v1/responses/stats")

    [sums] = recorded.rows("SELECT COUNT(*) n, SUM(prompt_tokens) p, SUM(completion_tokens) c, "
                           "SUM(total_tokens) t, AVG(duration_ms) d FROM responses")
    stats = body["statistics"]
    assert stats["total_responses"] == sums["n"] == 4
    assert (stats["prompt_tokens"], stats["completion_tokens"], stats["total_tokens"]) == (
        sums["p"], sums["c"], sums["t"])
    assert stats["avg_duration_ms"] == round(sums["d"])
    assert (stats["error_count"], stats["streaming_responses"]) == (0, 1)
    assert isinstance(stats["total_tokens"], int) and stats["total_tokens"] > 0


def test_stats_take_the_list_filters(recorded):
    [bob] = recorded.rows("SELECT r.session_id, r.api_key_hash, s.total_tokens FROM requests r "
                          "JOIN responses s ON s.request_id = r.id WHERE r.model = 'mock-2'")
    for params in ({"model": "mock-2"}, {"session_id": bob["session_id"]}, {"api_key_hash": bob["api_key_hash"]}):
        stats = get(recorded, "/v1/responses/stats", **params)["statistics"]
        assert (stats["total_responses"], stats["total_tokens"]) == (1, bob["total_tokens"]), params
    assert get(recorded, "/v1/responses/stats", provider="nope")["statistics"]["total_tokens"] == 0


def test_stats_of_an_empty_store_are_zeros(make_gateway):
    gateway = make_gateway()
    stats = get(gateway, "/v1/responses/stats")["statistics"]
    assert {k: stats[k] for k in ("total_responses", "total_tokens", "prompt_tokens", "completion_tokens",
                                  "avg_duration_ms", "error_count", "streaming_responses")} == dict.fromkeys(
        ("total_responses", "total_tokens", "prompt_tokens", "completion_tokens", "avg_duration_ms",
         "error_count", "streaming_responses"), 0)
    assert get(gateway, "/v1/responses")["total"] == 0


def test_list_filters(recorded):
    def count(**params) -> int:
        body = get(recorded, "/v1/responses", **params)
        assert body["total"] == len(body["data"])
        return body["total"]

    assert (count(model="mock-2"), count(model="mock-1"), count(provider="mock"), count(model="nope")) == (1, 3, 4, 0)
    [session] = recorded.rows("SELECT id FROM sessions WHERE first_user_message = 'Plan a trip'")
    assert count(session_id=session["id"]) == 2
    assert (count(status="ok"), count(status="error")) == (4, 0)
    stamps = sorted(r["timestamp"] for r in recorded.rows("SELECT timestamp FROM responses"))
    assert count(**{"from": stamps[2]}) == 2 and count(**{"to": stamps[2]}) == 2


def test_errors_are_recorded_and_filterable(gateway):
    client_for(gateway).chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "ok"}])
    httpx.post(gateway.url + "/v1/chat/completions",
               json={"model": "error-429", "messages": [{"role": "user", "content": "boom"}]})

    [failed] = get(gateway, "/v1/responses", status="error")["data"]
    assert failed["status_code"] == 429 and failed["error"] and failed["finish_reason"] == "error"
    assert [r["error"] for r in get(gateway, "/v1/responses", status="ok")["data"]] == [None]
    assert get(gateway, "/v1/responses/stats")["statistics"]["error_count"] == 1


@pytest.mark.parametrize(("sort", "order"), [("duration", "desc"), ("duration", "asc"), ("time", "asc")])
def test_sorted_cursor_walk(recorded, sort, order):
    expected = get(recorded, "/v1/responses", sort=sort, order=order)["data"]
    key = "duration_ms" if sort == "duration" else "timestamp"
    keys = [r[key] for r in expected]
    assert keys == sorted(keys, reverse=order == "desc")
    seen, cursor = [], None
    for _ in range(10):
        page = get(recorded, "/v1/responses", limit=3, sort=sort, order=order, **({"cursor": cursor} if cursor else {}))
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and len(seen) == 4
