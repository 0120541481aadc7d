"""/v1/usage and /v1/search against a live gateway (mock provider), answers checked against the rows,
on SQLite (FTS5) and PostgreSQL (tsvector)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import client_for
from tests.postgres import any_store_url

store_url = any_store_url
ERRORS = "SUM(CASE WHEN s.error IS NOT NULL THEN 1 ELSE 0 END)"


@pytest.fixture
def traffic(make_gateway, openai_upstream):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1", openai_api_key="k")
    alice, bob = client_for(gateway, api_key="sk-alice"), client_for(gateway, api_key="sk-bob")
    for index in range(6):
        (alice if index % 2 else bob).chat.completions.create(
            model="gpt-4o-mini" if index < 4 else "error-500" if index == 5 else "mystery-model",
            messages=[{"role": "user", "content": f"tell me about pelicans number {index}"}]) \
            if index != 5 else _expect_error(alice)
    return gateway


def _expect_error(client) -> None:
    import openai

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="error-500", messages=[{"role": "user", "content": "boom pelicans"}])


def _get(gateway, path: str, **params) -> httpx.Response:
    return httpx.get(gateway.url + path, params=params, timeout=10)


def test_usage_by_model_matches_the_rows_and_prices_known_models(traffic):
    body = _get(traffic, "/v1/usage", group_by="model").json()
    by_model = {row["model"]: row for row in body["data"]}
    assert set(by_model) == {"gpt-4o-mini", "mystery-model", "error-500"}
    rows = traffic.rows(f"SELECT r.model, COUNT(*) AS n, SUM(s.total_tokens) AS tokens, {ERRORS} AS errors "
                        "FROM requests r JOIN responses s ON s.request_id = r.id GROUP BY r.model")
    for row in rows:
        assert by_model[row["model"]]["requests"] == row["n"]
        assert by_model[row["model"]]["total_tokens"] == (row["tokens"] or 0)
        assert by_model[row["model"]]["errors"] == row["errors"]
    gpt = by_model["gpt-4o-mini"]
    # genai-prices knows gpt-4o-mini ($0.15 in / $0.60 out per million): the cost is priced, not guessed.
    expected = sum(r["prompt_tokens"] * 0.15e-6 + r["completion_tokens"] * 0.6e-6 for r in traffic.rows(
        "SELECT prompt_tokens, completion_tokens FROM responses WHERE model = 'gpt-4o-mini'"))
    assert gpt["cost"] == pytest.approx(expected) and gpt["cost"] > 0 and gpt["unpriced_requests"] == 0
    assert by_model["mystery-model"]["unpriced_requests"] == 1 and by_model["mystery-model"]["cost"] == 0
    assert gpt["p95_duration_ms"] >= 1 and gpt["avg_duration_ms"] is not None
    assert body["totals"]["requests"] == 6


def test_usage_by_day_and_key_and_time_range(traffic):
    by_key = _get(traffic, "/v1/usage", group_by="api_key").json()["data"]
    assert sorted(row["requests"] for row in by_key) == [3, 3]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    [day] = _get(traffic, "/v1/usage", group_by="day").json()["data"]
    assert day["day"] == today and day["requests"] == 6
    future = int(time.time() * 1000) + 3_600_000 * 2
    assert _get(traffic, "/v1/usage", group_by="day", **{"from": future}).json()["data"] == []
    error = _get(traffic, "/v1/usage", group_by="weekday").json()["error"]
    assert error["param"] == "group_by"


def test_responses_stats_come_from_rollups_and_match_a_scan(traffic):
    stats = _get(traffic, "/v1/responses/stats").json()["statistics"]
    [scan] = traffic.rows(f"SELECT COUNT(*) AS n, SUM(s.total_tokens) AS tokens, {ERRORS} AS errors "
                          "FROM responses s")
    assert (stats["total_responses"], stats["total_tokens"], stats["error_count"]) == (
        scan["n"], scan["tokens"], scan["errors"])
    assert stats["total_cost"] > 0
    scoped = _get(traffic, "/v1/responses/stats", model="gpt-4o-mini").json()["statistics"]
    assert scoped["total_responses"] == 4


def test_search_finds_turns_with_snippets_and_filters(traffic):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = _get(traffic, "/v1/search", q="pelicans").json()["data"]
        if len(found) == 6:
            break
        time.sleep(0.02)
    assert len(found) == 6
    assert found[0]["timestamp"] >= found[-1]["timestamp"]  # newest first
    assert "[pelicans]" in found[0]["prompt_snippet"]
    only = _get(traffic, "/v1/search", q="pelicans number 3").json()["data"]
    assert [row["model"] for row in only] == ["gpt-4o-mini"] and "[3]" in only[0]["prompt_snippet"]
    assert len(_get(traffic, "/v1/search", q="pelicans", model="mystery-model").json()["data"]) == 1
    ranked = _get(traffic, "/v1/search", q="pelicans number 3", sort="relevance").json()["data"]
    assert [row["model"] for row in ranked] == ["gpt-4o-mini"] and isinstance(ranked[0]["score"], float)
    phrase = _get(traffic, "/v1/search", q='"number 4" OR boom', syntax="fts").json()["data"]
    assert len(phrase) == 2
    bad = _get(traffic, "/v1/search", q='"unbalanced', syntax="fts")
    if traffic.engine.dialect.name == "sqlite":
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_search"
    else:  # PostgreSQL's web search syntax reads any input: an unclosed quote is a phrase to the end.
        assert bad.status_code == 200 and bad.json()["data"] == []
    # Punctuation in plain mode is never an operator.
    assert _get(traffic, "/v1/search", q="pelicans-number: (2)").status_code == 200
