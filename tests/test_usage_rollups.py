"""The writer's bookkeeping: cost, hourly rollups and the search index follow the rows, deletes included
(on SQLite and PostgreSQL)."""

from __future__ import annotations

import time

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


SEARCH_ID = {"sqlite": "rowid", "postgresql": "id"}
MATCH = {"sqlite": "search_index MATCH :term", "postgresql": "document @@ plainto_tsquery('simple', :term)"}


def test_search_index_holds_each_turn_once_and_forgets_deleted_rows(make_gateway):
    gateway = make_gateway()
    client = client_for(gateway)
    history = [{"role": "system", "content": "You are a zebra expert."},
               {"role": "user", "content": "Tell me about quagga stripes"}]
    first = client.chat.completions.create(model="mock-1", messages=history)
    history += [first.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": "And okapi legs?"}]
    client.chat.completions.create(model="mock-1", messages=history)

    def hits(term: str) -> list:
        return gateway.rows(f"SELECT {SEARCH_ID[dialect]} AS rowid FROM search_index WHERE {MATCH[dialect]}",
                            term=term)

    dialect = gateway.engine.dialect.name

    # The index is filled just behind the recorder's commits (search_indexer.py): wait for it.
    deadline = time.monotonic() + 10
    while not hits("okapi") and time.monotonic() < deadline:
        time.sleep(0.01)

    # Turn two resends turn one; only its new message is indexed, so each term is found once.
    assert len(hits("quagga")) == len(hits("zebra")) == len(hits("okapi")) == 1
    assert hits("okapi")[0]["rowid"] != hits("quagga")[0]["rowid"]
    [second] = gateway.rows(f"SELECT prompt, response FROM search_index WHERE {MATCH[dialect]}", term="okapi")
    assert second["prompt"] == "And okapi legs?" and "okapi" in second["response"]
    gateway.execute("DELETE FROM sessions")
    assert hits("quagga") == [] and gateway.count("responses") == 0


class gateway_connection:
    def __init__(self, gateway) -> None:
        import sqlite3

        self.connection = sqlite3.connect(gateway.db_path)
        self.connection.execute("PRAGMA foreign_keys=ON")

    def __enter__(self):
        return self.connection

    def __exit__(self, *exc) -> None:
        self.connection.commit()
        self.connection.close()


def test_rows_a_crash_left_unindexed_are_indexed_at_the_next_start(tmp_path):
    """SQLite only: PostgreSQL's search rows are written with the exchange rows, in one transaction."""
    from chatledger.store import Store

    store = Store.open(database_path=tmp_path / "ledger.db", session_timeout_ms=60_000)
    connection = store.engine.raw_connection()
    cursor = connection.cursor()
    cursor.execute("INSERT INTO sessions (id, session_key, message_count, created_at, updated_at, expires_at) "
                   "VALUES ('s', 's', 1, 1, 1, 2)")
    cursor.execute("INSERT INTO requests (id, session_id, request_id, timestamp, method, path, openai_request, "
                   "model, stream, created_at) VALUES (1, 's', 'r', 1, 'POST', '/v1/chat/completions', "
                   "'{\"messages\": [{\"role\": \"user\", \"content\": \"find the narwhal\"}]}', 'm', 0, 1)")
    cursor.execute("INSERT INTO responses (id, request_id, session_id, response_id, timestamp, openai_response, "
                   "created_at) VALUES (1, 1, 's', 'x', 1, "
                   "'{\"choices\": [{\"message\": {\"content\": \"a tusked whale\"}}]}', 1)")
    connection.commit()
    connection.close()

    sink = store.sink()  # as a restarted gateway's recorder would
    sink.maintain(idle=True)
    sink.shutdown()
    with gateway_connection(type("G", (), {"db_path": tmp_path / "ledger.db"})) as check:
        assert check.execute("SELECT rowid FROM search_index WHERE search_index MATCH 'narwhal'").fetchall() == [(1,)]
        assert check.execute("SELECT rowid FROM search_index WHERE search_index MATCH 'tusked'").fetchall() == [(1,)]
    store.close()


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
