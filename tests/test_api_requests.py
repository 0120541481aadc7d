"""/v1/requests and /v1/sessions/{id}/requests through the real gateway."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import client_for
from tests.test_api_sessions import assert_error, chat, get

SUMMARY_FIELDS = {"id", "request_id", "session_id", "timestamp", "method", "path", "model", "provider",
                  "upstream_model", "stream", "api_key_hash", "created_at"}
BODIES = {"openai_request", "provider_request", "qwen_request"}


@pytest.fixture
def recorded(make_gateway):
    gateway = make_gateway()
    chat(gateway, "Plan a trip")
    chat(gateway, "Plan a trip", "Where to?", "Paris")
    chat(gateway, "Write a haiku", key="sk-bob", model="mock-2")
    chat(gateway, "Explain monads", model="mock-2")
    chat(gateway, "One more")
    return gateway


def test_list_leaves_bodies_out_unless_asked(recorded):
    body = get(recorded, "/v1/requests")
    rows = recorded.rows("SELECT * FROM requests ORDER BY timestamp DESC, id DESC")

    assert (body["object"], body["total"], body["limit"], body["offset"]) == ("list", 5, 50, 0)
    assert [r["id"] for r in body["data"]] == [row["id"] for row in rows]
    for item, row in zip(body["data"], rows, strict=True):
        assert set(item) == SUMMARY_FIELDS
        assert item["stream"] is False
        assert {k: item[k] for k in SUMMARY_FIELDS - {"stream"}} == {k: row[k] for k in SUMMARY_FIELDS - {"stream"}}

    full = get(recorded, "/v1/requests", include_bodies="true")["data"]
    for item, row in zip(full, rows, strict=True):
        assert set(item) == SUMMARY_FIELDS | BODIES
        assert (item["openai_request"], item["provider_request"], item["qwen_request"]) == (
            row["openai_request"], None, row["openai_request"])


def test_detail_by_row_id_or_uuid_has_bodies_as_json_strings(recorded):
    [row] = recorded.rows("SELECT * FROM requests WHERE model = 'mock-2' AND api_key_hash IS NOT NULL "
                          "ORDER BY id LIMIT 1")
    by_id = get(recorded, f"/v1/requests/{row['id']}")
    by_uuid = get(recorded, f"/v1/requests/{row['request_id']}")

    assert by_id == by_uuid
    assert set(by_id) == SUMMARY_FIELDS | BODIES
    assert isinstance(by_id["openai_request"], str) and isinstance(by_id["qwen_request"], str)
    assert json.loads(by_id["openai_request"])["messages"] == [{"role": "user", "content": "Write a haiku"}]
    assert by_id["provider_request"] is None and by_id["qwen_request"] == by_id["openai_request"]
    assert (by_id["model"], by_id["provider"], by_id["method"], by_id["path"]) == (
        "mock-2", "mock", "POST", "/v1/chat/completions")


def test_translated_request_shows_what_the_provider_got(gateway, upstream_requests):
    client = client_for(gateway)
    list(client.chat.completions.create(model="fake-gpt", stream=True,
                                        messages=[{"role": "user", "content": "stream me"}]))
    [row] = gateway.rows("SELECT id FROM requests")

    request = get(gateway, f"/v1/requests/{row['id']}")

    assert request["stream"] is True and request["provider"] == "openai"
    assert request["provider_request"] is not None and request["qwen_request"] == request["provider_request"]
    assert json.loads(request["qwen_request"]) == upstream_requests[0]["body"]
    assert "stream_options" not in json.loads(request["openai_request"])


@pytest.mark.parametrize("ref", ["999", "0", "99999999999999999999999", "5b0e4a8e-0000-4000-8000-000000000000",
                                 "not-an-id"])
def test_unknown_request_is_404(recorded, ref):
    error = assert_error(httpx.get(f"{recorded.url}/v1/requests/{ref}"), 404)
    assert error["code"] == "request_not_found"
    assert_error(httpx.get(f"{recorded.url}/v1/requests/{ref}/response"), 404)


def test_filters(recorded):
    def ids(**params) -> list[int]:
        return [r["id"] for r in get(recorded, "/v1/requests", **params)["data"]]

    assert ids(model="mock-2") == [r["id"] for r in recorded.rows(
        "SELECT id FROM requests WHERE model = 'mock-2' ORDER BY timestamp DESC, id DESC")]
    assert len(ids(model="mock-2")) == 2 and ids(model="nope") == []
    assert len(ids(provider="mock")) == 5
    [bob] = recorded.rows("SELECT * FROM requests WHERE model = 'mock-2' ORDER BY id LIMIT 1")
    assert ids(api_key_hash=bob["api_key_hash"]) == [bob["id"]]
    trip = recorded.rows("SELECT id, session_id FROM requests ORDER BY id LIMIT 2")
    assert ids(session_id=trip[0]["session_id"], order="asc") == [trip[0]["id"], trip[1]["id"]]
    assert len(ids(status="ok")) == 5 and ids(status="error") == []
    stamps = sorted(r["timestamp"] for r in recorded.rows("SELECT timestamp FROM requests"))
    window = get(recorded, "/v1/requests", **{"from": stamps[1], "to": stamps[3]})
    assert sorted(r["timestamp"] for r in window["data"]) == stamps[1:3] and window["total"] == 2


def test_status_filter_finds_failed_requests(gateway):
    client = client_for(gateway)
    client.chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "fine"}])
    failed = httpx.post(gateway.url + "/v1/chat/completions",
                        json={"model": "error-500", "messages": [{"role": "user", "content": "boom"}]})
    assert failed.status_code == 500

    errors = get(gateway, "/v1/requests", status="error")
    assert [r["model"] for r in errors["data"]] == ["error-500"] and errors["total"] == 1
    assert [r["model"] for r in get(gateway, "/v1/requests", status="ok")["data"]] == ["fake-gpt"]


@pytest.mark.parametrize(("sort", "order"), [("time", "desc"), ("time", "asc"), ("duration", "desc"),
                                             ("duration", "asc")])
def test_cursor_pages_match_one_big_page(recorded, sort, order):
    expected = get(recorded, "/v1/requests", sort=sort, order=order)["data"]
    seen, cursor = [], None
    for _ in range(10):
        params = {"limit": 2, "sort": sort, "order": order} | ({"cursor": cursor} if cursor else {})
        page = get(recorded, "/v1/requests", **params)
        assert page["total"] == 5 and page["offset"] == 0
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    if sort == "duration":
        durations = {r["request_id"]: r["duration_ms"] for r in recorded.rows("SELECT * FROM responses")}
        keys = [durations[r["id"]] for r in seen]
        assert keys == sorted(keys, reverse=order == "desc")


def test_session_requests(recorded):
    [trip] = recorded.rows("SELECT id FROM sessions WHERE first_user_message = 'Plan a trip'")
    body = get(recorded, f"/v1/sessions/{trip['id']}/requests")

    assert body["total"] == 2 and {r["session_id"] for r in body["data"]} == {trip["id"]}
    assert body["data"][0]["timestamp"] >= body["data"][1]["timestamp"]
    assert all(set(r) == SUMMARY_FIELDS for r in body["data"])
    with_bodies = get(recorded, f"/v1/sessions/{trip['id']}/requests", include_bodies="true", limit=1)
    assert json.loads(with_bodies["data"][0]["openai_request"])["messages"][-1]["content"] == "Paris"
    assert with_bodies["next_cursor"] is not None and with_bodies["has_more"] is True


def test_an_answer_is_in_the_query_api_at_once_even_before_its_commit(make_gateway):
    """Answers go out on the journal's word, before their rows are committed. The query API waits
    for the recorder before it reads, so an exchange answered before a query is in its results."""
    import sqlite3
    import threading

    gateway = make_gateway()
    blocker = sqlite3.connect(gateway.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the recorder cannot commit for now
    try:
        chat(gateway, "answered while the store was busy")  # answered all the same
        seen: list[dict] = []
        reader = threading.Thread(target=lambda: seen.append(get(gateway, "/v1/requests")))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive(), "the query API answered before the answered exchange was committed"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    reader.join(10)
    assert [row["request_id"] for row in seen[0]["data"]] == [r["request_id"] for r in gateway.rows(
        "SELECT request_id FROM requests")] and seen[0]["total"] == 1
