"""The PostgreSQL recorder's own paths: text PostgreSQL cannot store (NUL) still gets recorded, ids
taken ahead for a batch are its own, a batch written on several connections at once is written
exactly once when one of them fails, and the sessions table is vacuumed where autovacuum is off."""

from __future__ import annotations

import asyncio
import secrets
import time

import orjson
import psycopg
import pytest

from chatledger.ids import uuid7
from chatledger.sessions import first_user_text
from chatledger.store import Store
from chatledger.store.engine import psycopg_conninfo
from chatledger.store.pg_vacuum import Vacuumer
from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.writer import Writer


@pytest.fixture
def store(tmp_path, postgres_url):
    opened = Store.open(database_path=tmp_path / "unused.db", database_url=postgres_url, session_timeout_ms=60_000)
    yield opened
    opened.close()


def _conninfo(store: Store) -> str:
    return psycopg_conninfo(store.engine.url.render_as_string(hide_password=False))


def _rows(store: Store, sql: str) -> list[tuple]:
    with psycopg.connect(_conninfo(store)) as connection:
        return connection.execute(sql).fetchall()


def _exchange(content: str, *, model: str = "m", raw: bytes | None = None, session: str | None = None,
              timestamp: int | None = None) -> list[Record]:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    request_id = uuid7()
    timestamp = timestamp or int(time.time() * 1000)
    answer = {"id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " + content}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    return [RequestRecord(request_id, timestamp, "POST", "/v1/chat/completions", "chat", first_user_text(body, "chat"),
                          raw or orjson.dumps(body), None, model, "openai", model, False, session, None),
            ResponseRecord(request_id, uuid7(), timestamp, 200, 1, openai_response=orjson.dumps(answer))]


def test_nul_characters_anywhere_in_a_batch_are_replaced_not_refused(store):
    # A NUL escaped in the JSON reaches the session's first message, the model name and the rollups;
    # a raw NUL byte in a body reaches the binary COPY. Each takes the slow path, which replaces them.
    sink = store.sink()
    sink.write(_exchange("plain question") + _exchange("nul \u0000 in the text"))  # the session UPSERT's arrays
    sink.write(_exchange("raw body", raw=b'{"messages": "raw \x00 byte"}'))  # the requests' COPY
    sink.write(_exchange("odd model", model="gpt\u0000x"))  # the COPY, then the rollups
    sink.shutdown()
    assert _rows(store, "SELECT COUNT(*) FROM requests")[0][0] == 4
    assert _rows(store, "SELECT COUNT(*) FROM responses")[0][0] == 4
    assert _rows(store, "SELECT COUNT(*) FROM search_pending")[0][0] == 4
    assert ("nul \ufffd in the text",) in _rows(store, "SELECT first_user_message FROM sessions")
    assert ('{"messages": "raw \ufffd byte"}',) in _rows(store, "SELECT openai_request FROM requests")
    assert _rows(store, "SELECT model, requests FROM usage_hourly ORDER BY model") == [("gpt\ufffdx", 1), ("m", 3)]

    # The indexer meets the escaped NUL again when it parses the stored body: replaced there too.
    index = store.search_backend()
    assert index.index_next(10) == 4
    index.close()
    assert ("nul \ufffd in the text",) in _rows(store, "SELECT prompt FROM search_index")


def test_ids_a_replica_takes_ahead_are_its_own(store):
    """Each batch takes the next one's ids with its COMMIT: two replicas' recorders, batches of changing
    sizes, every row with its own id and every answer linked to its own request."""
    first, second = store.sink(), store.sink()
    for turn in range(6):
        for sink, session in ((first, "a"), (second, "b")):
            sink.write([record for index in range(1 + (turn * 3 + len(session)) % 4)
                        for record in _exchange(f"{session} {turn} {index}", session=session)])
    first.shutdown()
    second.shutdown()
    linked = _rows(store, "SELECT q.session_id, r.session_id, q.openai_request, r.openai_response FROM responses r "
                          "JOIN requests q ON q.id = r.request_id")
    counts = dict(_rows(store, "SELECT id, message_count FROM sessions"))
    assert len(linked) == _rows(store, "SELECT COUNT(*) FROM requests")[0][0] == counts["a"] + counts["b"]
    for asked, answered, request, response in linked:
        content = orjson.loads(request)["messages"][0]["content"]
        assert asked == answered == content[0] and orjson.loads(response)["choices"][0]["message"]["content"] == \
            "ok " + content
    assert counts == {"a": 13, "b": 13}  # batches of 2, 1, 4, 3, 2 and 1 exchanges


def _session_stats(store: Store) -> tuple[int, int]:
    [(dead, vacuums)] = _rows(store, "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables "
                                     "WHERE relid = to_regclass('sessions')")
    return dead, vacuums


def test_sessions_are_vacuumed_where_autovacuum_is_off(store):
    conninfo = _conninfo(store)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("ALTER TABLE sessions SET (autovacuum_enabled = false)")
    sink = store.sink()
    now = int(time.time() * 1000)
    for batch in range(30):  # 30 versions of each of 10 sessions: 290 dead ones
        sink.write([record for session in range(10)
                    for record in _exchange(f"turn {batch}", session=f"s{session}", timestamp=now + batch)])
    sink.shutdown()
    deadline = time.monotonic() + 30
    while _session_stats(store)[0] < 290:  # the writer's backend reports its counts within seconds
        assert time.monotonic() < deadline, "the statistics never showed the dead session rows"
        time.sleep(0.2)
    vacuumer = Vacuumer(conninfo, min_dead=100, scale=1.0)
    assert vacuumer.vacuum_due() == ["sessions"]
    dead, vacuums = _session_stats(store)
    assert dead == 0 and vacuums == 1
    assert vacuumer.vacuum_due() == []  # nothing left to do until the next 110 dead rows
    vacuumer.stop()


def test_tables_the_gateway_does_not_own_are_not_its_to_vacuum(store):
    """Someone else's tables (or tables autovacuum looks after) get no VACUUM and no kept connection."""
    role = f"chatledger_test_{secrets.token_hex(4)}"
    conninfo = _conninfo(store)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        schema = admin.execute("SELECT current_schema()").fetchone()[0]
        admin.execute(f"CREATE ROLE {role} LOGIN")
        try:
            admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
            admin.execute("ALTER TABLE sessions SET (autovacuum_enabled = false)")
            owner = Vacuumer(conninfo, min_dead=0, scale=0.0)
            assert owner.vacuum_due() is not None  # the owner would look after it
            owner.stop()
            stranger = Vacuumer(psycopg.conninfo.make_conninfo(conninfo, user=role), min_dead=0, scale=0.0)
            assert stranger.vacuum_due() is None
            deadline = time.monotonic() + 5  # its connection closed: gone once its backend has exited
            while admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the vacuumer kept its connection"
                time.sleep(0.05)
            stranger.stop()
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


# Fails the requests of one conversation: always (a record the store refuses), or the first two times
# (a serialization failure, which the recorder retries: twice, so the part that did commit is offered
# twice more).
FAIL_REQUESTS = """
CREATE FUNCTION fail_requests() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.session_id = 'refused' THEN
        RAISE EXCEPTION 'this conversation is refused';
    END IF;
    IF NEW.session_id = 'flaky' AND nextval('flaky_failures') <= 2 THEN
        RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$;
CREATE SEQUENCE flaky_failures;
CREATE TRIGGER fail_requests BEFORE INSERT ON requests FOR EACH ROW EXECUTE FUNCTION fail_requests();
"""


def _write_through_a_writer(store: Store, records: list[Record]) -> Writer:
    async def run() -> Writer:
        writer = Writer(lambda: store.sink(connections=2), flush_ms=1, retry_max_s=0.05)
        writer.start()
        for record in records:
            writer.submit(record)
        await asyncio.to_thread(writer.close)
        return writer

    return asyncio.run(run())


@pytest.mark.parametrize("failing", ["refused", "flaky"])
def test_a_batch_split_over_connections_is_written_once_when_one_part_fails(store, failing):
    """Twelve conversations in one batch go over two connections; one conversation's request fails
    in its part while the other part commits. Refused: that exchange is set aside (its answer too,
    having no request), the rest written once each. Flaky: the retry writes everything, once."""
    with psycopg.connect(_conninfo(store), autocommit=True) as connection:
        connection.execute(FAIL_REQUESTS)
    conversations = [failing, *(f"conversation {index}" for index in range(11))]
    records = [record for session in conversations for record in _exchange(f"in {session}", session=session)]
    writer = _write_through_a_writer(store, records)
    sessions = dict(_rows(store, "SELECT id, message_count FROM sessions"))
    recorded = _rows(store, "SELECT q.session_id, COUNT(*), COUNT(DISTINCT q.request_id), COUNT(r.id) "
                            "FROM requests q LEFT JOIN responses r ON r.request_id = q.id GROUP BY q.session_id")
    written = [session for session in conversations if failing == "flaky" or session != failing]
    assert sorted(recorded) == sorted((session, 1, 1, 1) for session in written)
    assert sessions == dict.fromkeys(written, 1)
    assert _rows(store, "SELECT COUNT(*) FROM responses")[0][0] == len(written)
    assert writer.stats.dead_lettered == (0 if failing == "flaky" else 2)
    assert writer.stats.failures == (2 if failing == "flaky" else 0)
    assert _rows(store, "SELECT SUM(requests) FROM usage_hourly")[0][0] == len(written)
