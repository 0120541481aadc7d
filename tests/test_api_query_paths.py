"""The query API's faster paths at scale (docs/query-benchmarks.md) answer exactly what the rows say:
sessions by model, provider or error, requests and responses with errors, ranked search. Each list is
checked against SQL over the rows, on the first page (with its total) and page by page with a cursor
(where the reader picks its plan from the totals), on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.postgres import any_store_url
from tests.test_api_sessions import get

store_url = any_store_url

# (opening message, caller, [models of its turns]); "error-429" turns are answered with a 429.
CONVERSATIONS = [
    ("Plan a trip to Lisbon", "sk-alice", ["gpt-4o-mini", "gpt-4o-mini", "error-429"]),
    ("Write a haiku about rain", "sk-bob", ["gpt-4o"]),
    ("Explain monads", "sk-alice", ["gpt-4o-mini", "gpt-4o"]),
    ("Summarise the news", "sk-carol", ["error-429"]),
    ("Translate hello", "sk-bob", ["gpt-4o-mini"]),
    ("Name a river", "sk-alice", ["gpt-4o-mini", "error-429", "gpt-4o-mini"]),
]


def _turn(gateway, key: str, model: str, messages: list[dict]) -> str:
    answer = httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, "messages": messages},
                        headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert answer.status_code == (429 if model.startswith("error-") else 200), answer.text
    time.sleep(0.003)  # distinct millisecond timestamps: the orders below are then the rows' own
    return answer.json()["choices"][0]["message"]["content"] if answer.status_code == 200 else "(failed)"


@pytest.fixture
def ledger(make_gateway, openai_upstream):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1", openai_api_key="k")
    turns = 0
    for opening, key, models in CONVERSATIONS:
        messages = [{"role": "user", "content": opening}]
        for index, model in enumerate(models):
            reply = _turn(gateway, key, model, messages)
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"and then {index}"}]
            turns += 1
    return gateway


def _walk(gateway, path: str, limit: int, **params) -> tuple[list, list[int]]:
    """Every row of a list, `limit` at a time with cursors, and the total each page reported."""
    seen, totals, cursor = [], [], None
    for _ in range(50):
        page = get(gateway, path, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        seen += [row["id"] for row in page["data"]]
        totals.append(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, totals
    raise AssertionError("the cursor walk did not end")


def _assert_lists(gateway, path: str, expected: list, **params) -> None:
    first = get(gateway, path, **params)
    assert ([row["id"] for row in first["data"]], first["total"]) == (expected, len(expected)), params
    for limit in (1, 2):  # limit=1: so few rows needed that the reader walks; 50: it starts from the matches
        seen, totals = _walk(gateway, path, limit, **params)
        assert seen == expected and set(totals) <= {len(expected)}, (limit, params)


def _session_ids(gateway, where: str, *args) -> list[str]:
    return [row["id"] for row in gateway.rows(f"SELECT id FROM sessions s WHERE {where} "
                                              "ORDER BY created_at DESC, id DESC", *args)]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "error-429", "unknown-model"])
def test_sessions_by_model(ledger, model):
    expected = _session_ids(ledger, "EXISTS (SELECT 1 FROM requests q WHERE q.session_id = s.id AND q.model = ?)",
                            model)
    assert (len(expected) > 0) == (model != "unknown-model")
    _assert_lists(ledger, "/v1/sessions", expected, model=model)


def test_sessions_by_model_with_other_filters(ledger):
    [alice] = ledger.rows("SELECT DISTINCT api_key_hash FROM sessions WHERE first_user_message = 'Explain monads'")
    expected = _session_ids(ledger, "api_key_hash = ? AND EXISTS (SELECT 1 FROM requests q "
                            "WHERE q.session_id = s.id AND q.model = 'gpt-4o-mini')", alice["api_key_hash"])
    assert len(expected) == 3
    _assert_lists(ledger, "/v1/sessions", expected, model="gpt-4o-mini", api_key_hash=alice["api_key_hash"])
    failed = _session_ids(ledger, "EXISTS (SELECT 1 FROM requests q WHERE q.session_id = s.id AND "
                          "q.model = 'gpt-4o-mini') AND EXISTS (SELECT 1 FROM responses r "
                          "WHERE r.session_id = s.id AND r.error IS NOT NULL)")
    assert len(failed) == 2
    _assert_lists(ledger, "/v1/sessions", failed, model="gpt-4o-mini", status="error")
    assert get(ledger, "/v1/sessions", model="gpt-4o-mini", provider="openai")["total"] == 4
    assert get(ledger, "/v1/sessions", model="gpt-4o-mini", provider="mock")["total"] == 0


def test_sessions_by_provider_and_status(ledger):
    everyone = _session_ids(ledger, "1 = 1")
    _assert_lists(ledger, "/v1/sessions", everyone, provider="openai")
    failed = _session_ids(ledger, "EXISTS (SELECT 1 FROM responses r WHERE r.session_id = s.id "
                          "AND r.error IS NOT NULL)")
    assert len(failed) == 3
    _assert_lists(ledger, "/v1/sessions", failed, status="error")
    fine = _session_ids(ledger, "EXISTS (SELECT 1 FROM responses r WHERE r.session_id = s.id AND r.error IS NULL)")
    _assert_lists(ledger, "/v1/sessions", fine, status="ok")


def test_requests_with_errors(ledger):
    expected = [row["id"] for row in ledger.rows(
        "SELECT q.id FROM requests q WHERE EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.id "
        "AND r.error IS NOT NULL) ORDER BY q.timestamp DESC, q.id DESC")]
    assert len(expected) == 3
    _assert_lists(ledger, "/v1/requests", expected, status="error")
    gpt = [row["id"] for row in ledger.rows("SELECT id FROM requests WHERE model = 'error-429' "
                                            "ORDER BY timestamp DESC, id DESC")]
    _assert_lists(ledger, "/v1/requests", gpt, status="error", model="error-429")


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_responses_with_errors_by_time_and_duration(ledger, order):
    direction = order.upper()
    by_time = [row["id"] for row in ledger.rows(
        f"SELECT id FROM responses WHERE error IS NOT NULL ORDER BY timestamp {direction}, id {direction}")]
    by_duration = [row["id"] for row in ledger.rows(
        "SELECT id FROM responses WHERE error IS NOT NULL AND duration_ms IS NOT NULL "
        f"ORDER BY duration_ms {direction}, id {direction}")]
    assert len(by_time) == len(by_duration) == 3
    _assert_lists(ledger, "/v1/responses", by_time, status="error", order=order)
    _assert_lists(ledger, "/v1/responses", by_duration, status="error", sort="duration", order=order)
    mini = [row["id"] for row in ledger.rows(
        "SELECT r.id FROM responses r JOIN requests q ON q.id = r.request_id WHERE r.error IS NULL "
        f"AND q.model = 'gpt-4o-mini' ORDER BY r.timestamp {direction}, r.id {direction}")]
    _assert_lists(ledger, "/v1/responses", mini, status="ok", model="gpt-4o-mini", order=order)


def _search(gateway, **params) -> list[dict]:
    answer = httpx.get(gateway.url + "/v1/search", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _indexed(gateway, word: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(_search(gateway, q=word, limit=200)) < count:
        assert time.monotonic() < deadline, "the search index did not catch up"
        time.sleep(0.02)


def test_ranked_search_keeps_the_best_rows_there_are(ledger):
    # "then" is in the prompt of every turn after a conversation's first.
    expected = sum(len(models) - 1 for _, _, models in CONVERSATIONS)
    _indexed(ledger, "then", expected)
    ranked = _search(ledger, q="then", sort="relevance", limit=200)
    assert len(ranked) == expected == 5
    # SQLite's bm25 is lower for better matches, PostgreSQL's ts_rank higher.
    best_first = ledger.engine.dialect.name == "postgresql"
    assert [row["score"] for row in ranked] == sorted((row["score"] for row in ranked), reverse=best_first)
    assert all("[then]" in row["prompt_snippet"] for row in ranked)
    best = _search(ledger, q="then", sort="relevance", limit=3)
    assert best == ranked[:3]

    # A response deleted behind the gateway's back stays in the SQLite index until its next start:
    # the page is still `limit` rows of what the ledger has.
    ledger.execute("DELETE FROM responses WHERE id = ?", best[0]["id"])
    again = _search(ledger, q="then", sort="relevance", limit=3)
    assert [row["id"] for row in again] == [row["id"] for row in ranked[1:4]]
    assert [row["id"] for row in _search(ledger, q="then", sort="relevance", model="gpt-4o-mini", limit=200)] == [
        row["id"] for row in ranked[1:] if row["model"] == "gpt-4o-mini"]


def test_slowest_first_counts_only_timed_responses(ledger):
    # An imported response may have no duration: it has no place in this order, nor in its total.
    [untimed] = ledger.rows("SELECT MIN(id) AS id FROM responses")
    ledger.execute("UPDATE responses SET duration_ms = NULL WHERE id = ?", untimed["id"])
    expected = [row["id"] for row in ledger.rows(
        "SELECT id FROM responses WHERE duration_ms IS NOT NULL ORDER BY duration_ms DESC, id DESC")]
    assert len(expected) == ledger.count("responses") - 1
    _assert_lists(ledger, "/v1/responses", expected, sort="duration")
