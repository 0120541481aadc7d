"""The writer's bookkeeping: cost and the hourly and daily rollups follow the rows, deletes included,
and usage over days reads them right at the edges of a range (on SQLite and PostgreSQL). The search
index has its own tests (test_search_index.py)."""

from __future__ import annotations

import datetime

import httpx

from tests.conftest import client_for
from tests.postgres import any_store_url

store_url = any_store_url


def _totals(gateway, table: str = "usage_hourly") -> dict:
    [row] = gateway.rows("SELECT SUM(requests) AS requests, SUM(errors) AS errors, SUM(total_tokens) AS tokens, "
                         "SUM(prompt_tokens) AS prompt, SUM(duration_ms_sum) AS duration, "
                         f"SUM({' + '.join(f'h{i:02d}' for i in range(20))}) AS histogram FROM {table}")
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
    assert _totals(gateway) == _totals(gateway, "usage_daily") == _scan(gateway)
    assert _totals(gateway)["requests"] == 7 and _totals(gateway)["errors"] == 1
    per_key = gateway.rows("SELECT api_key_hash, SUM(requests) AS n FROM usage_hourly GROUP BY api_key_hash "
                           "ORDER BY api_key_hash")
    assert sorted(r["n"] for r in per_key) == [1, 3, 3]
    # The mock provider is free: a known price of zero, not an unknown one.
    assert gateway.rows("SELECT SUM(unpriced) AS n FROM usage_hourly WHERE model = 'mock-1'")[0]["n"] == 0
    assert gateway.rows("SELECT COUNT(*) AS n FROM responses WHERE cost = 0")[0]["n"] == 6

    session = gateway.rows("SELECT session_id FROM requests WHERE model = 'mock-1' LIMIT 1")[0]["session_id"]
    gateway.execute("DELETE FROM sessions WHERE id = :id", id=session)
    assert _totals(gateway) == _totals(gateway, "usage_daily") == _scan(gateway)


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


DAY_MS = 86_400_000
START = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def _spread_over_days(store) -> None:
    """Exchanges at hours 0, 5, 13 and 23 of four days, through the recorder's own sink."""
    from chatledger.store.records import RequestRecord, ResponseRecord

    records = []
    for day in range(4):
        for hour in (0, 5, 13, 23):
            at = START + day * DAY_MS + hour * 3_600_000 + 60_000
            request_id = f"spread-{day}-{hour}"
            records.append(RequestRecord(request_id, at, "POST", "/v1/chat/completions", "chat", f"day {day}",
                                         b'{"model": "m"}', None, "m", "openai", "m", False, None, None))
            answer = b'{"choices": [], "usage": {"prompt_tokens": %d, "completion_tokens": 1, "total_tokens": %d}}' \
                % (hour + 1, hour + 2)
            records.append(ResponseRecord(request_id, f"answer-{day}-{hour}", at + 5, 200, 5, openai_response=answer))
    sink = store.sink()
    sink.write(records)
    sink.shutdown()


def test_usage_by_day_adds_whole_days_and_the_hours_at_both_ends(tmp_path, store_url):
    from chatledger.store import Store
    from chatledger.store.usage import UsageQuery, usage

    store = Store.open(database_path=tmp_path / "ledger.db", database_url=store_url, session_timeout_ms=60_000)
    try:
        _spread_over_days(store)
        with store.engine.connect() as connection:
            def ask(since: int | None, until: int | None, *group_by: str) -> dict:
                return usage(connection, UsageQuery(tuple(group_by), since, until))

            def scanned(since: int | None, until: int | None) -> list[tuple[str, int, int]]:
                """The same figures counted from the rows (hours cut as the API cuts them)."""
                found: dict[int, list[int]] = {}
                for at, tokens in connection.exec_driver_sql("SELECT timestamp, total_tokens FROM responses"):
                    hour = at - at % 3_600_000
                    if (since is None or hour >= since - since % 3_600_000) and (until is None or hour < until):
                        day = found.setdefault(at - at % DAY_MS, [0, 0])
                        day[0] += 1
                        day[1] += tokens
                return [(datetime.datetime.fromtimestamp(day / 1000, tz=datetime.UTC).strftime("%Y-%m-%d"), n, t)
                        for day, (n, t) in sorted(found.items())]

            ranges = [(None, None), (START, START + 4 * DAY_MS),  # whole days only
                      (START + 4 * 3_600_000, START + 3 * DAY_MS + 14 * 3_600_000),  # both ends inside a day
                      (START + DAY_MS + 13 * 3_600_000 + 1, None),  # from the middle of an hour, open-ended
                      (None, START + 2 * DAY_MS + 6 * 3_600_000),  # open start, ends inside a day
                      (START + DAY_MS + 2 * 3_600_000, START + DAY_MS + 20 * 3_600_000)]  # within one day
            for since, until in ranges:
                answer = ask(since, until, "day")
                assert [(row["day"], row["requests"], row["total_tokens"]) for row in answer["data"]] == \
                    scanned(since, until), (since, until)
                by_hour = ask(since, until, "hour")
                assert by_hour["totals"] == answer["totals"], (since, until)
            assert ask(None, None)["totals"]["requests"] == 16
    finally:
        store.close()


def test_session_models_follow_the_requests(make_gateway):
    """One row per session and model (and provider) it used, written the first time; gone with the session."""
    gateway = make_gateway()
    client = client_for(gateway, api_key="sk-models")
    for model in ("mock-1", "mock-2", "mock-1"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "one conversation"}])
    client.chat.completions.create(model="mock-2", messages=[{"role": "user", "content": "another one"}])

    def kept() -> list[tuple]:
        return sorted(tuple(r.values()) for r in gateway.rows(
            "SELECT session_id, model, provider FROM session_models"))

    def asked() -> list[tuple]:
        return sorted(tuple(r.values()) for r in gateway.rows(
            "SELECT DISTINCT session_id, model, COALESCE(provider, '') AS provider FROM requests"))

    assert kept() == asked() and len(kept()) == 3
    session = gateway.rows("SELECT session_id FROM requests WHERE model = 'mock-1' LIMIT 1")[0]["session_id"]
    assert httpx.delete(f"{gateway.url}/v1/sessions/{session}").status_code == 200
    assert kept() == asked() and len(kept()) == 1
