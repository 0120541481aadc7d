"""Seed 000's quick-start guide, command by command: each curl and jq one-liner, done in Python.

The jq programs are spelled out next to their Python equivalents; what the guide promises is asserted.
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

REQUEST_ID = "12345"


def curl(gateway, path: str, method: str = "GET", **kwargs) -> dict:
    answer = httpx.request(method, gateway.url + path, timeout=10, **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    return json.loads(answer.text)  # `| jq .` only needs it to be JSON


def jq_string(number: float) -> str:
    """How jq renders a number inside a string interpolation."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def post_chat(gateway, content: str, model: str = "qwen-turbo") -> None:
    # curl -X POST .../v1/chat/completions -H "Content-Type: application/json" -d '{...}'
    answer = httpx.post(gateway.url + "/v1/chat/completions", headers={"Content-Type": "application/json"},
                        content=json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}))
    assert answer.status_code == 200, answer.text


@pytest.fixture
def proxy(make_gateway):
    gateway = make_gateway()
    # The guide debugs REQUEST_ID="12345": start the request ids there (sqlite_sequence may be edited).
    connection = sqlite3.connect(gateway.db_path)
    with connection:
        connection.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('requests', 12344)")
    connection.close()
    return gateway


def test_quick_start_guide(proxy, tmp_path):
    # 1. The database is ready and empty: { sessions: 0, requests: 0, responses: 0 }
    for resource in ("sessions", "requests", "responses"):
        assert curl(proxy, f"/v1/{resource}")["total"] == 0

    # 2. Make some requests: every one is persisted.
    post_chat(proxy, "Hello!")
    for topic in range(11):
        post_chat(proxy, f"Topic number {topic}")
    # No waiting: the query API answers with everything answered before it was asked.

    # 3. Query your data: list sessions, usage statistics, requests.
    sessions = curl(proxy, "/v1/sessions")
    assert sessions["total"] == 12 and len(sessions["data"]) == 12
    assert curl(proxy, "/v1/responses/stats")["statistics"]["total_responses"] == 12
    assert curl(proxy, "/v1/requests")["total"] == 12

    # View recent sessions: ?limit=10 | jq '.data[] | {id, message_count, created: .created_at}'
    recent = [{"id": s["id"], "message_count": s["message_count"], "created": s["created_at"]}
              for s in curl(proxy, "/v1/sessions", params={"limit": 10})["data"]]
    assert len(recent) == 10 and all(s["message_count"] == 1 and s["created"] > 0 for s in recent)
    assert [s["created"] for s in recent] == sorted((s["created"] for s in recent), reverse=True)

    # Get session details: info, statistics, all requests in the session.
    [hello] = [s for s in sessions["data"] if s["first_user_message"] == "Hello!"]
    session_id = hello["id"]
    assert curl(proxy, f"/v1/sessions/{session_id}") == hello
    session_stats = curl(proxy, f"/v1/sessions/{session_id}/stats")
    assert (session_stats["session_id"], session_stats["request_count"], session_stats["response_count"]) == (
        session_id, 1, 1)
    assert session_stats["total_tokens"] == session_stats["prompt_tokens"] + session_stats["completion_tokens"] > 0
    session_requests = curl(proxy, f"/v1/sessions/{session_id}/requests")
    assert session_requests["total"] == 1 and session_requests["data"][0]["id"] == int(REQUEST_ID)

    # Calculate token usage: jq '.statistics.total_tokens / 1000000 * 2 | "Estimated cost: $\(.)"'
    stats = curl(proxy, "/v1/responses/stats")
    cost = stats["statistics"]["total_tokens"] / 1000000 * 2
    line = f"Estimated cost: ${jq_string(cost)}"
    [tokens] = proxy.rows("SELECT SUM(total_tokens) AS t FROM responses")
    assert cost == tokens["t"] / 1000000 * 2 > 0 and line.startswith("Estimated cost: $")
    assert float(line.removeprefix("Estimated cost: $")) == cost

    # Find slow requests: ?limit=100 | jq '.data | sort_by(.duration_ms) | reverse | .[0:10] | .[] |
    #                                       {id, duration_ms, total_tokens}'
    responses = curl(proxy, "/v1/responses", params={"limit": 100})["data"]
    slowest = [{"id": r["id"], "duration_ms": r["duration_ms"], "total_tokens": r["total_tokens"]}
               for r in list(reversed(sorted(responses, key=lambda r: r["duration_ms"])))[0:10]]
    assert len(slowest) == 10 and all(isinstance(r["duration_ms"], int) and r["total_tokens"] > 0 for r in slowest)
    assert [r["duration_ms"] for r in slowest] == sorted((r["duration_ms"] for r in responses), reverse=True)[:10]

    # Debug a specific request: REQUEST_ID="12345", its details and its response.
    request = curl(proxy, f"/v1/requests/{REQUEST_ID}")
    assert request["id"] == 12345 and request["session_id"] == session_id and request["model"] == "qwen-turbo"
    response = curl(proxy, f"/v1/requests/{REQUEST_ID}/response")
    assert response["request_id"] == 12345 and response["status_code"] == 200
    assert "You said: Hello!" in json.loads(response["openai_response"])["choices"][0]["message"]["content"]
    # jq -r '.openai_request | fromjson | .messages'
    assert json.loads(request["openai_request"])["messages"] == [{"role": "user", "content": "Hello!"}]
    # jq -r '.qwen_request | fromjson'
    assert json.loads(request["qwen_request"]) == {"model": "qwen-turbo",
                                                   "messages": [{"role": "user", "content": "Hello!"}]}

    # Common operation 1, the billing report (axios): statistics.total_responses and total_tokens.
    usage = curl(proxy, "/v1/responses/stats")["statistics"]
    report = [f"Total Requests: {usage['total_responses']}", f"Total Tokens: {usage['total_tokens']:,}",
              f"Estimated Cost: ${usage['total_tokens'] / 1000000 * 2.0:.2f}"]
    assert report[0] == "Total Requests: 12" and report[2] == "Estimated Cost: $0.00"

    # Common operation 2, export-session.sh: three files of JSON.
    for name, path in (("session", ""), ("requests", "/requests"), ("stats", "/stats")):
        (tmp_path / f"{name}.json").write_text(httpx.get(f"{proxy.url}/v1/sessions/{session_id}{path}").text)
    assert json.loads((tmp_path / "session.json").read_text())["id"] == session_id
    assert json.loads((tmp_path / "requests.json").read_text())["data"][0]["request_id"] == request["request_id"]
    assert json.loads((tmp_path / "stats.json").read_text())["request_count"] == 1

    # Common operation 3, monitor-usage.sh: jq -r on the stats, and `.total` of ?limit=1.
    assert usage["total_responses"] == 12 and usage["total_tokens"] > 0
    assert isinstance(usage["avg_duration_ms"], int) and f"{usage['avg_duration_ms']}ms".endswith("ms")
    assert curl(proxy, "/v1/sessions", params={"limit": 1})["total"] == 12

    # Verify persistence: `.total` of sessions, requests and responses are all > 0.
    assert all(curl(proxy, f"/v1/{resource}")["total"] > 0 for resource in ("sessions", "requests", "responses"))

    # Common operation 4, clean up: curl -X DELETE .../v1/sessions/$SESSION_ID (the rows go with it).
    assert curl(proxy, f"/v1/sessions/{session_id}", method="DELETE") == {"id": session_id, "deleted": True}
    assert proxy.rows("SELECT id FROM requests WHERE session_id = ?", session_id) == []
    assert proxy.rows("SELECT id FROM responses WHERE session_id = ?", session_id) == []
    assert proxy.rows("SELECT id FROM requests WHERE id = 12345") == []
    assert httpx.get(f"{proxy.url}/v1/sessions/{session_id}").status_code == 404
    assert httpx.get(f"{proxy.url}/v1/requests/{REQUEST_ID}").status_code == 404
    assert curl(proxy, "/v1/sessions", params={"limit": 1})["total"] == 11
    assert curl(proxy, "/v1/responses/stats")["statistics"]["total_responses"] == 11


def test_cheat_sheet_and_verify_steps(proxy):
    # "Verify Persistence": one request with "Test", then every `.total` is > 0.
    post_chat(proxy, "Test")
    for resource in ("sessions", "requests", "responses"):
        assert curl(proxy, f"/v1/{resource}")["total"] > 0
    # Cheat sheet: sessions, stats, one session, requests, all answer JSON.
    session_id = curl(proxy, "/v1/sessions")["data"][0]["id"]
    assert curl(proxy, "/v1/responses/stats")["statistics"]["total_tokens"] > 0
    assert curl(proxy, f"/v1/sessions/{session_id}")["first_user_message"] == "Test"
    assert curl(proxy, "/v1/requests")["data"][0]["id"] == int(REQUEST_ID)
    # The guide's placeholder session does not exist: an OpenAI-style 404, not a crash.
    missing = httpx.get(f"{proxy.url}/v1/sessions/session_abc123")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
