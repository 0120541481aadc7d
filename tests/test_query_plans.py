"""How SQLite answers the query API's calls that were slow at a million exchanges (docs/query-benchmarks.md):
each call goes through the real gateway, the statements its reader ran are captured and their plans
asked of SQLite (EXPLAIN QUERY PLAN; without ANALYZE statistics a plan does not depend on how many
rows there are). None reads a whole table of requests or responses, and each reads the index made for
it. Speed itself is measured by bench/query.py, not here."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.test_api_sessions import chat, get

WHOLE_TABLE = re.compile(r"^SCAN (requests|responses|q|r)$")


@pytest.fixture
def gateway(make_gateway):
    gateway = make_gateway()
    chat(gateway, "Plan a trip")
    chat(gateway, "Plan a trip", "Where to?", "Lisbon")
    chat(gateway, "Write a haiku", key="sk-bob")
    return gateway


@pytest.fixture
def plans(gateway) -> Iterator:
    """plans(path, **params): the plan lines of each statement the call ran, as {sql: [lines]}."""
    captured: list[tuple[str, object]] = []
    engine = gateway.app.store.engine

    def capture(connection, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            captured.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)

    def run(path: str, **params) -> dict[str, list[str]]:
        captured.clear()
        get(gateway, path, **params)
        statements = list(captured)
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            return {sql: [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()]
                    for sql, args in statements}

    yield run
    sa.event.remove(engine, "before_cursor_execute", capture)


def _lines(plans: dict[str, list[str]]) -> list[str]:
    lines = [line for plan in plans.values() for line in plan]
    assert not [line for line in lines if WHOLE_TABLE.match(line)], lines
    return lines


def _uses(lines: list[str], index: str, *, covering: bool = False) -> bool:
    return any(f"{'COVERING INDEX' if covering else 'INDEX'} {index} " in line + " " for line in lines)


def test_sessions_of_a_model_read_indexes_only(plans):
    # Two of the three sessions have the model: one more row than a page of 1 is found by walking the
    # sessions newest first with a probe each; the count reads the model's index alone.
    lines = _lines(plans("/v1/sessions", model="mock-1", limit=1))
    assert "SEARCH session_models USING COVERING INDEX idx_session_models_model (model=?)" in lines, lines
    assert any("COVERING INDEX" in line and "model=?" in line and "session_id=?" in line for line in lines), lines
    # A page of 50 would walk every session: it starts from the model's sessions instead.
    lines = _lines(plans("/v1/sessions", model="mock-1"))
    assert lines.count("SEARCH session_models USING COVERING INDEX idx_session_models_model (model=?)") == 2, lines
    assert not [line for line in lines if "session_id=?" in line], lines
    assert not [line for line in lines if "requests" in line], lines  # session_models alone (0006)


def test_sessions_of_a_provider_read_session_models(plans):
    lines = _lines(plans("/v1/sessions", provider="mock"))
    assert any("session_models" in line and "COVERING INDEX" in line for line in lines), lines
    assert not [line for line in lines if "requests" in line], lines


@pytest.mark.parametrize(("path", "params", "index"), [
    ("/v1/sessions", {}, "idx_responses_errors_session"),
    ("/v1/requests", {}, "idx_responses_errors_request"),
    ("/v1/responses", {}, "idx_responses_errors_timestamp"),
    ("/v1/responses", {"sort": "duration"}, "idx_responses_errors_duration"),
])
def test_errors_are_read_from_their_partial_indexes(plans, path, params, index):
    found = plans(path, status="error", **params)
    lines = _lines(found)
    assert _uses(lines, index), lines
    counts = [plan for sql, plan in found.items() if re.match(r"\s*SELECT count\(", sql)]
    for plan in counts:  # the totals too: never the whole list of responses
        assert all("errors" in line or "usage_hourly" in line or "COVERING" in line for line in plan
                   if "responses" in line or "requests" in line), plan


def test_ranked_search_joins_only_the_best_rows(plans, gateway):
    deadline = time.monotonic() + 10
    while not get(gateway, "/v1/search", q="trip")["data"]:  # the first turn, once indexed
        assert time.monotonic() < deadline, "the search index did not catch up"
        time.sleep(0.02)
    found = plans("/v1/search", q="trip", sort="relevance")
    # One statement: the ranked hits were all there, so there was no second try joining first.
    [plan] = [plan for sql, plan in found.items() if "search_index" in sql]
    _lines(found)
    # The matches are ranked inside FTS5 (hits) before any row of the ledger is read.
    ranked = next(i for i, line in enumerate(plan) if line.startswith("SCAN hits"))
    joined = next(i for i, line in enumerate(plan) if line.startswith("SEARCH r "))
    assert ranked < joined, plan
