"""/v1/sessions through the real gateway, plus what every query route shares: access, errors, paging."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

API_ROUTES = ("/v1/sessions", "/v1/requests", "/v1/responses", "/v1/responses/stats")


def chat(gateway, *contents: str, key: str = "sk-alice", model: str = "mock-1", **extra) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]
    reply = httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, "messages": messages, **extra},
                       headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    time.sleep(0.003)  # distinct millisecond timestamps, for the from/to and ordering assertions
    return reply.json()


def get(gateway, path: str, **params) -> dict:
    answer = httpx.get(gateway.url + path, params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_error(answer: httpx.Response, status: int, param: str | None = None) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and "detail" not in body
    error = body["error"]
    assert error["message"] and error["type"] and error["code"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture
def three_sessions(make_gateway):
    gateway = make_gateway()
    chat(gateway, "Plan a trip")
    chat(gateway, "Plan a trip", "Where to?", "Paris")
    chat(gateway, "Write a haiku", key="sk-bob", model="mock-2")
    chat(gateway, "Explain monads")
    return gateway


def test_list_is_newest_first_with_the_seed_fields(three_sessions):
    body = get(three_sessions, "/v1/sessions")

    assert {k: body[k] for k in ("object", "total", "limit", "offset", "has_more", "next_cursor")} == {
        "object": "list", "total": 3, "limit": 50, "offset": 0, "has_more": False, "next_cursor": None}
    rows = three_sessions.rows("SELECT * FROM sessions ORDER BY created_at DESC, id DESC")
    assert [s["id"] for s in body["data"]] == [r["id"] for r in rows]
    for item, row in zip(body["data"], rows, strict=True):
        for field in ("id", "chat_id", "parent_id", "first_user_message", "message_count", "created_at",
                      "updated_at", "expires_at", "api_key_hash"):
            assert item[field] == row[field], field
        assert isinstance(item["created_at"], int) and item["expires_at"] > item["created_at"] > 10**12
    trip = next(s for s in body["data"] if s["first_user_message"] == "Plan a trip")
    assert trip["message_count"] == 2


def test_limit_offset_and_total(three_sessions):
    first = get(three_sessions, "/v1/sessions", limit=2)
    second = get(three_sessions, "/v1/sessions", limit=2, offset=2)

    assert (first["total"], len(first["data"]), first["has_more"]) == (3, 2, True)
    assert (second["total"], len(second["data"]), second["has_more"]) == (3, 1, False)
    everything = [s["id"] for s in get(three_sessions, "/v1/sessions")["data"]]
    assert [s["id"] for s in first["data"] + second["data"]] == everything


@pytest.mark.parametrize(("sort", "order"), [("time", "desc"), ("time", "asc"), ("duration", "desc")])
def test_cursor_walks_every_session_once(three_sessions, sort, order):
    expected = [s["id"] for s in get(three_sessions, "/v1/sessions", sort=sort, order=order)["data"]]
    seen, cursor = [], None
    while True:
        params = {"limit": 1, "sort": sort, "order": order} | ({"cursor": cursor} if cursor else {})
        page = get(three_sessions, "/v1/sessions", **params)
        assert page["total"] == 3
        seen += [s["id"] for s in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and len(set(seen)) == 3


def test_filters(three_sessions):
    bob = get(three_sessions, "/v1/sessions", model="mock-2")
    assert [s["first_user_message"] for s in bob["data"]] == ["Write a haiku"] and bob["total"] == 1
    key_hash = bob["data"][0]["api_key_hash"]
    assert get(three_sessions, "/v1/sessions", api_key_hash=key_hash)["total"] == 1
    assert get(three_sessions, "/v1/sessions", provider="mock")["total"] == 3
    assert get(three_sessions, "/v1/sessions", provider="openai")["total"] == 0
    assert get(three_sessions, "/v1/sessions", status="ok")["total"] == 3
    assert get(three_sessions, "/v1/sessions", status="error")["total"] == 0
    times = sorted(s["created_at"] for s in get(three_sessions, "/v1/sessions")["data"])
    window = get(three_sessions, "/v1/sessions", **{"from": times[1], "to": times[2] + 1})
    assert sorted(s["created_at"] for s in window["data"]) == times[1:]
    assert get(three_sessions, "/v1/sessions", **{"to": times[0]})["total"] == 0


def test_get_one_session_and_404(three_sessions):
    listed = get(three_sessions, "/v1/sessions")["data"][0]
    assert get(three_sessions, f"/v1/sessions/{listed['id']}") == listed
    error = assert_error(httpx.get(three_sessions.url + "/v1/sessions/session_abc123"), 404)
    assert error["type"] == "not_found_error" and error["code"] == "session_not_found"
    assert_error(httpx.get(three_sessions.url + "/v1/sessions/session_abc123/stats"), 404)
    assert_error(httpx.get(three_sessions.url + "/v1/sessions/session_abc123/requests"), 404)
    assert_error(httpx.delete(three_sessions.url + "/v1/sessions/session_abc123"), 404)


def test_stats_add_up_the_sessions_rows(three_sessions):
    trip = get(three_sessions, "/v1/sessions", model="mock-1", limit=1, order="asc")["data"][0]
    stats = get(three_sessions, f"/v1/sessions/{trip['id']}/stats")

    [sums] = three_sessions.rows(
        "SELECT COUNT(*) n, SUM(prompt_tokens) p, SUM(completion_tokens) c, SUM(total_tokens) t, "
        "MAX(timestamp) last FROM responses WHERE session_id = ?", trip["id"])
    [asked] = three_sessions.rows("SELECT COUNT(*) n, MIN(timestamp) first FROM requests WHERE session_id = ?",
                                  trip["id"])
    assert stats["session_id"] == trip["id"]
    assert (stats["request_count"], stats["response_count"]) == (asked["n"], sums["n"]) == (2, 2)
    assert (stats["prompt_tokens"], stats["completion_tokens"], stats["total_tokens"]) == (
        sums["p"], sums["c"], sums["t"])
    assert stats["total_tokens"] > 0 and stats["error_count"] == 0 and isinstance(stats["avg_duration_ms"], int)
    assert stats["first_timestamp"] == asked["first"] and stats["last_timestamp"] >= sums["last"]


def test_delete_cascades_to_requests_and_responses(three_sessions):
    trip = get(three_sessions, "/v1/sessions", model="mock-1", order="asc")["data"][0]
    assert three_sessions.count("requests") == 4

    answer = httpx.delete(f"{three_sessions.url}/v1/sessions/{trip['id']}")

    assert answer.status_code == 200 and answer.json() == {"id": trip["id"], "deleted": True}
    assert three_sessions.rows("SELECT id FROM requests WHERE session_id = ?", trip["id"]) == []
    assert three_sessions.rows("SELECT id FROM responses WHERE session_id = ?", trip["id"]) == []
    assert (three_sessions.count("requests"), three_sessions.count("responses")) == (2, 2)
    assert_error(httpx.get(f"{three_sessions.url}/v1/sessions/{trip['id']}"), 404)
    assert get(three_sessions, "/v1/sessions")["total"] == 2


def test_store_connections_enforce_foreign_keys(make_gateway):
    gateway = make_gateway()
    with gateway.app.store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize("query", ["limit=-1", "limit=0", "limit=1001", "limit=ten", "offset=-1", "sort=bogus",
                                   "order=sideways", "status=meh", "from=yesterday", "cursor=bogus",
                                   "cursor=W10", "offset=5&cursor=W10"])
def test_bad_parameters_are_400_in_openai_shape(make_gateway, query):
    gateway = make_gateway()
    for route in ("/v1/sessions", "/v1/requests", "/v1/responses"):
        error = assert_error(httpx.get(f"{gateway.url}{route}?{query}"), 400)
        assert error["type"] == "invalid_request_error"
        assert error["param"] == query.split("=")[0]


def test_a_cursor_only_fits_the_order_it_was_made_for(three_sessions):
    cursor = get(three_sessions, "/v1/sessions", limit=1)["next_cursor"]
    error = assert_error(httpx.get(three_sessions.url + "/v1/sessions",
                                   params={"limit": 1, "cursor": cursor, "order": "asc"}), 400, "cursor")
    assert error["code"] == "invalid_cursor"
    assert_error(httpx.get(three_sessions.url + "/v1/requests", params={"cursor": cursor}), 400, "cursor")


def test_unknown_paths_and_methods_answer_like_the_gateway(make_gateway):
    gateway = make_gateway()
    assert assert_error(httpx.get(gateway.url + "/v1/nothing-here"), 404)["code"] == "unknown_url"
    assert assert_error(httpx.get(gateway.url + "/v1/chat/completions"), 405)["code"] == "method_not_allowed"
    answer = httpx.post(gateway.url + "/v1/sessions", json={})
    assert assert_error(answer, 405)["code"] == "method_not_allowed" and "GET" in answer.headers["allow"]


def test_openapi_and_docs_are_served(make_gateway):
    gateway = make_gateway()
    spec = get(gateway, "/openapi.json")
    for route in (*API_ROUTES, "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/stats",
                  "/v1/sessions/{session_id}/requests", "/v1/requests/{request_id}",
                  "/v1/requests/{request_id}/response", "/v1/responses/{response_id}"):
        assert route in spec["paths"], route
    assert "delete" in spec["paths"]["/v1/sessions/{session_id}"]
    parameters = {p["name"]: p for p in spec["paths"]["/v1/requests"]["get"]["parameters"]}
    assert {"limit", "offset", "cursor", "sort", "order", "model", "provider", "session_id", "api_key_hash",
            "status", "from", "to", "include_bodies"} <= set(parameters)
    assert "bodies" in parameters["include_bodies"]["description"]
    docs = httpx.get(gateway.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_disabled_crud_api_is_404(make_gateway):
    gateway = make_gateway(enable_crud_api=False)
    chat(gateway, "still recorded")
    for route in (*API_ROUTES, "/v1/sessions/x", "/openapi.json", "/docs"):
        assert_error(httpx.get(gateway.url + route), 404)
    assert gateway.app.fallback is None


def test_master_key_is_required_when_set(make_gateway):
    gateway = make_gateway(chatledger_master_key="mk")
    chat(gateway, "hello")
    for route in API_ROUTES:
        assert assert_error(httpx.get(gateway.url + route), 401)["type"] == "authentication_error"
        assert_error(httpx.get(gateway.url + route, headers={"Authorization": "Bearer wrong"}), 401)
        answer = httpx.get(gateway.url + route, headers={"Authorization": "Bearer mk"})
        assert answer.status_code == 200, answer.text
    assert_error(httpx.delete(gateway.url + "/v1/sessions/x"), 401)
    # The spec says how to authenticate.
    assert "HTTPBearer" in get(gateway, "/openapi.json")["components"]["securitySchemes"]


def test_without_master_key_only_loopback_is_answered(make_gateway):
    gateway = make_gateway()

    async def ask(host: str) -> list[int]:
        transport = httpx.ASGITransport(app=gateway.app, client=(host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return [(await client.get(route)).status_code for route in API_ROUTES]

    assert asyncio.run(ask("203.0.113.7")) == [403] * len(API_ROUTES)
    assert asyncio.run(ask("127.0.0.1")) == [200] * len(API_ROUTES)


def test_a_deleted_session_leaves_search_at_once_and_the_index_file_soon(make_gateway):
    import sqlite3
    import threading

    from chatledger.store.search_index import search_path

    gateway = make_gateway()
    chat(gateway, "Tell me about quagga stripes")
    index = search_path(gateway.db_path)

    def indexed() -> int:
        if not index.exists():
            return 0
        with sqlite3.connect(index) as connection:
            return connection.execute("SELECT COUNT(*) FROM search_index").fetchone()[0]

    deadline = time.monotonic() + 10
    while not indexed():
        assert time.monotonic() < deadline, "the search index did not catch up"
        time.sleep(0.02)
    # Someone else writes to the index file for a moment: the indexer's forget has to wait for them.
    blocker = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: blocker.execute("COMMIT")).start()
    [session] = get(gateway, "/v1/sessions")["data"]

    assert httpx.delete(f"{gateway.url}/v1/sessions/{session['id']}").status_code == 200
    assert get(gateway, "/v1/search", q="quagga")["data"] == []  # searches join the ledger
    deadline = time.monotonic() + 10
    while indexed():  # the indexer takes the text out once the other writer lets go
        assert time.monotonic() < deadline, "the deleted session stayed in the search index"
        time.sleep(0.02)
    blocker.close()
