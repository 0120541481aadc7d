"""The writer's bookkeeping: cost and hourly rollups follow the rows, deletes included (on SQLite and
PostgreSQL). The search index has its own tests (test_search_index.py)."""

from __future__ import annotations

import httpx

from tests.conftest import client_for
from tests.postgres import any_store_url

store_url = any_store_url


def _totals(gateway) -> dict:
    [row] = gateway.rows("SELECT SUM(requests) AS requests, SUM(errors) AS errors, SUM(total_tokens) AS tokens, "
                         "SUM(prompt_tokens) AS prompt, SUM(duration_ms_sum) AS duration, "
                         f"SUM({' + '.join(f'h{i:02d}' for i in range(20))}) AS histogram FROM usage_hourly")
    return dict(row)


def _scan(gateway) -> dict:
    [row] = gateway.rows("SELECT COUNT(*) AS requests, SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS errors, "
                         "SUM(COALESCE(total_tokens, 0)) AS tokens, SUM(COALESCE(prompt_tokens, 0)) AS prompt, "
                         "SUM(duration_ms) AS duration, COUNT(duration_ms) AS histogram FROM responses")
    return dict(row)


def test_rollups_match_the_rows_through_writes_and_deletes(make_gateway):
    gateway = make_gateway()
    alice, bob = client_for(gateway, api_key="sk-alice"), client_for(gateway, api_key="sk-bob")
    for index in range(6):
        (alice if index % 2 else bob).chat.completions.create(
            model="mock-1" if index < 4 else "other-model", stream=index % 3 == 0,
            messages=[{"role": "user", "content": f"conversation {index % 3}"}])
    httpx.post(gateway.url + "/v1/chat/completions", content=b"{broken")
    assert _totals(gateway) == _scan(gateway)
    assert _totals(gateway)["requests"] == 7 and _totals(gateway)["errors"] == 1
    per_key = gateway.rows("SELECT api_key_hash, SUM(requests) AS n FROM usage_hourly GROUP BY api_key_hash "
                           "ORDER BY api_key_hash")
    assert sorted(r["n"] for r in per_key) == [1, 3, 3]
    # The mock provider is free: a known price of zero, not an unknown one.
    assert gateway.rows("SELECT SUM(unpriced) AS n FROM usage_hourly WHERE model = 'mock-1'")[0]["n"] == 0
    assert gateway.rows("SELECT COUNT(*) AS n FROM responses WHERE cost = 0")[0]["n"] == 6

    session = gateway.rows("SELECT session_id FROM requests WHERE model = 'mock-1' LIMIT 1")[0]["session_id"]
    gateway.execute("DELETE FROM sessions WHERE id = :id", id=session)
    assert _totals(gateway) == _scan(gateway)


def test_rebuilding_rollups_from_rows_gives_what_the_writer_kept(make_gateway):
    from chatledger.store.rollups import rebuild_statements

    gateway = make_gateway()
    client = client_for(gateway, api_key="sk-rebuild")
    for index in range(5):
        client.chat.completions.create(model=f"mock-{index % 2}", stream=index == 2,
                                       messages=[{"role": "user", "content": f"rebuild {index}"}])
    kept = [dict(r) for r in gateway.rows("SELECT * FROM usage_hourly ORDER BY model")]
    for statement in rebuild_statements():
        gateway.execute(statement)
    assert [dict(r) for r in gateway.rows("SELECT * FROM usage_hourly ORDER BY model")] == kept
