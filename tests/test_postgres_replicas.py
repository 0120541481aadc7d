"""Two gateway processes on one PostgreSQL database, under concurrent load: every answered request is
recorded exactly once, conversations continue across replicas as one session, and the rollups
behind /v1/responses/stats and /v1/usage add up to the rows."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import orjson
import pytest

from tests.gateway_server import GatewayProcess

WORKERS = 8
CONVERSATIONS_PER_WORKER = 25


def _chat(http: httpx.Client, url: str, messages: list[dict], stream: bool) -> str | None:
    """The answer's text, or None if the client did not get all of it."""
    body = {"model": "mock-1", "stream": stream, "messages": messages}
    try:
        response = http.post(url + "/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    if stream:
        if not response.text.endswith("data: [DONE]\n\n"):
            return None
        chunks = [orjson.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: {")]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return response.json()["choices"][0]["message"]["content"]


@pytest.fixture
def replicas(tmp_path, postgres_url):
    started = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        started.append(GatewayProcess(workdir, {"DATABASE_URL": postgres_url}).start())
    yield started
    for gateway in started:
        if gateway.process is not None and gateway.process.returncode is None:
            gateway.stop()


def test_two_replicas_record_every_exchange_once_and_share_sessions(replicas):
    a, b = replicas
    answered: list[str] = []  # the marker of every turn whose answer came back whole
    continued: list[str] = []  # conversations whose two turns were both answered (A, then B)
    lock = threading.Lock()

    def worker(number: int) -> None:
        with httpx.Client(timeout=30) as http:
            for index in range(CONVERSATIONS_PER_WORKER):
                marker = f"replica-{number}-{index}"
                first, second = (a, b) if index % 2 == 0 else (b, a)
                messages = [{"role": "user", "content": f"open {marker}"}]
                reply = _chat(http, first.url, messages, stream=index % 3 == 0)
                if reply is None:
                    continue
                with lock:
                    answered.append(f"open {marker}")
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"next {marker}"}]
                if _chat(http, second.url, messages, stream=index % 3 == 1) is not None:
                    with lock:
                        answered.append(f"next {marker}")
                        continued.append(marker)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(continued) == WORKERS * CONVERSATIONS_PER_WORKER  # nothing failed

    # Stop both (each drains its recorder), then look at what the database holds.
    for gateway in (a, b):
        gateway.stop()
    checker = GatewayProcess(a.workdir, {"DATABASE_URL": a.database_url}).start()
    try:
        requests = checker.rows("SELECT openai_request FROM requests")
        recorded = Counter(orjson.loads(r["openai_request"])["messages"][-1]["content"] for r in requests)
        assert set(recorded) == set(answered) and set(recorded.values()) == {1}
        assert checker.count("responses") == checker.count("requests") == len(answered)

        sessions = checker.rows("SELECT first_user_message, message_count, parent_id FROM sessions")
        assert len(sessions) == len(continued)
        assert {s["message_count"] for s in sessions} == {2}
        # The second turn's answer (given by the other replica) follows the first one's.
        linked = checker.rows("SELECT COUNT(*) AS n FROM responses r JOIN responses p ON p.response_id = r.parent_id "
                              "WHERE p.session_id = r.session_id")
        assert linked[0]["n"] == len(continued)

        stats = httpx.get(checker.url + "/v1/responses/stats", timeout=10).json()["statistics"]
        assert stats["total_responses"] == len(answered)
        [scan] = checker.rows("SELECT SUM(total_tokens) AS tokens FROM responses")
        assert stats["total_tokens"] == scan["tokens"]
        usage = httpx.get(checker.url + "/v1/usage", params={"group_by": "model"}, timeout=10).json()
        assert usage["totals"]["requests"] == len(answered)
        assert usage["totals"]["total_tokens"] == scan["tokens"]
    finally:
        checker.stop()
