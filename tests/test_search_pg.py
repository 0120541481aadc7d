"""The PostgreSQL search index behind the recorder: the recorder only queues response ids; indexers
(one per replica) claim them without ever taking the same row twice, a response deleted before or
while it is indexed leaves no search row and breaks nothing, and what a stopped gateway left queued
is indexed by the next one."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import psycopg
import pytest

from chatledger.ids import uuid7
from chatledger.sessions import first_user_text
from chatledger.store import Store, search_index
from chatledger.store.engine import psycopg_conninfo
from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.search_pg import CLAIM, PostgresSearchIndex
from tests.gateway_server import GatewayProcess


@pytest.fixture
def store(tmp_path, postgres_url):
    opened = Store.open(database_path=tmp_path / "unused.db", database_url=postgres_url, session_timeout_ms=60_000)
    yield opened
    opened.close()


def _exchange(conversation: str, word: str, timestamp: int) -> tuple[RequestRecord, ResponseRecord]:
    body = {"model": "m", "messages": [{"role": "user", "content": f"{conversation} asks about {word}"}]}
    request_id = uuid7()
    request = RequestRecord(request_id, timestamp, "POST", "/v1/chat/completions", "chat",
                            first_user_text(body, "chat"), orjson.dumps(body), None, "m", "openai", "m", False,
                            conversation, None)
    answer = {"id": "c", "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": f"{word} is a fine word"}}]}
    return request, ResponseRecord(request_id, uuid7(), timestamp, 200, 1, openai_response=orjson.dumps(answer))


def _record(store: Store, exchanges: dict[str, int]) -> None:
    """`count` exchanges in each named conversation (X-Session-Id), through the recorder's sink."""
    records: list[Record] = []
    now = int(time.time() * 1000)
    for conversation, count in exchanges.items():
        for index in range(count):
            records.extend(_exchange(conversation, f"word{conversation}{index}", now + index))
    sink = store.sink()
    sink.write(records)
    sink.shutdown()


def _conninfo(store: Store) -> str:
    return psycopg_conninfo(store.engine.url.render_as_string(hide_password=False))


def _scalar(store: Store, sql: str) -> object:
    with psycopg.connect(_conninfo(store)) as connection:
        return connection.execute(sql).fetchone()[0]  # type: ignore[index]


def test_the_recorder_queues_responses_and_the_indexer_makes_their_search_rows(store):
    _record(store, {"alpha": 5})
    assert _scalar(store, "SELECT COUNT(*) FROM search_index") == 0
    assert _scalar(store, "SELECT COUNT(*) FROM search_pending") == 5
    index = store.search_backend()
    assert isinstance(index, PostgresSearchIndex)
    assert index.backlog() == 5
    assert index.index_next(3) == 3 and index.index_next(3) == 2 and index.index_next(3) == 0
    assert index.backlog() == 0
    index.close()
    assert _scalar(store, "SELECT COUNT(*) FROM search_pending") == 0
    # Each row's text is the turn's prompt and answer, found by the search the API runs.
    assert _scalar(store, "SELECT prompt || ' / ' || response FROM search_index "
                          "WHERE document @@ plainto_tsquery('simple', 'wordalpha3')") == \
        "alpha asks about wordalpha3 / wordalpha3 is a fine word"
    assert _scalar(store, "SELECT COUNT(*) FROM search_index s JOIN responses r ON r.id = s.id") == 5


def test_two_indexers_on_one_queue_never_take_the_same_row(store):
    _record(store, {"alpha": 120, "beta": 80})
    conninfo = _conninfo(store)
    # An indexer in the middle of its chunk: its claimed ids are locked, and the other skips them.
    with psycopg.connect(conninfo) as busy:
        held = [row[0] for row in busy.execute(CLAIM, (50,)).fetchall()]
        other = PostgresSearchIndex(conninfo)
        assert other.catch_up(chunk=64) == 150
        assert _scalar(store, "SELECT COUNT(*) FROM search_index") == 150
        assert _scalar(store, f"SELECT COUNT(*) FROM search_index WHERE id IN ({', '.join(map(str, held))})") == 0
        busy.rollback()  # it died before committing: its chunk goes back to the queue
    assert other.catch_up(chunk=64) == 50
    other.close()

    # Then two indexers at once on a fresh queue: every id taken exactly once between them.
    _record(store, {"gamma": 300})
    counts: list[int] = []

    def run() -> None:
        indexer = PostgresSearchIndex(conninfo)
        counts.append(indexer.catch_up(chunk=16))
        indexer.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(counts) == 300
    assert _scalar(store, "SELECT COUNT(*) FROM search_index") == 500
    assert _scalar(store, "SELECT COUNT(*) FROM search_pending") == 0


def test_a_response_deleted_before_its_turn_is_skipped_and_the_rest_indexed(store):
    _record(store, {"alpha": 4, "beta": 3})
    with psycopg.connect(_conninfo(store)) as connection:
        connection.execute("DELETE FROM sessions WHERE id = 'alpha'")
    index = store.search_backend()
    assert index.index_next(100) == 7  # all seven leave the queue
    index.close()
    assert _scalar(store, "SELECT COUNT(*) FROM search_pending") == 0
    assert _scalar(store, "SELECT string_agg(prompt, ',' ORDER BY id) FROM search_index") == \
        "beta asks about wordbeta0,beta asks about wordbeta1,beta asks about wordbeta2"


def test_a_response_deleted_while_its_chunk_is_indexed_leaves_no_search_row(store, monkeypatch):
    """DELETE /v1/sessions racing with an indexer: the delete waits for the chunk's commit, then takes
    the new search rows with it (ON DELETE CASCADE); neither side fails."""
    _record(store, {"alpha": 3, "beta": 2})
    conninfo = _conninfo(store)
    deleted: list[int] = []
    real_document = search_index.document

    def delete_session() -> None:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            deleted.append(connection.execute("DELETE FROM sessions WHERE id = 'alpha'").rowcount)

    deleter = threading.Thread(target=delete_session)

    def document_while_deleting(path: str, request: str | None, response: str | None) -> tuple[str, str]:
        if not deleter.is_alive() and not deleted:
            deleter.start()
            deadline = time.monotonic() + 10
            with psycopg.connect(conninfo, autocommit=True) as watcher:
                # Wait until the DELETE is really blocked on this chunk's row locks.
                while not watcher.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND query LIKE 'DELETE FROM sessions%'").fetchone():
                    assert time.monotonic() < deadline, "the DELETE never waited for the indexer"
                    time.sleep(0.01)
        return real_document(path, request, response)

    monkeypatch.setattr(search_index, "document", document_while_deleting)
    index = PostgresSearchIndex(conninfo)
    assert index.index_next(100) == 5
    index.close()
    deleter.join(10)
    assert deleted == [1]
    assert _scalar(store, "SELECT COUNT(*) FROM responses") == 2
    assert _scalar(store, "SELECT string_agg(prompt, ',' ORDER BY id) FROM search_index") == \
        "beta asks about wordbeta0,beta asks about wordbeta1"


def test_a_gateway_indexes_what_was_queued_while_no_indexer_ran(tmp_path, store, postgres_url):
    _record(store, {"alpha": 40})  # recorded, then the gateway stopped before indexing them
    assert _scalar(store, "SELECT COUNT(*) FROM search_pending") == 40
    gateway = GatewayProcess(tmp_path, {"DATABASE_URL": postgres_url}).start()
    try:
        deadline = time.monotonic() + 20
        while (found := httpx.get(gateway.url + "/v1/search", params={"q": "wordalpha37"}).json()["data"]) == []:
            assert time.monotonic() < deadline, "the queued rows were never indexed"
            time.sleep(0.05)
        expected = gateway.rows("SELECT r.response_id FROM responses r JOIN requests q ON q.id = r.request_id "
                                "WHERE q.openai_request LIKE '%wordalpha37%'")
        assert [hit["response_id"] for hit in found] == [row["response_id"] for row in expected]
    finally:
        gateway.stop()
    assert _scalar(store, "SELECT COUNT(*) FROM search_pending") == 0
    assert _scalar(store, "SELECT COUNT(*) FROM search_index") == 40


def test_health_can_ask_for_the_backlog_while_a_chunk_is_in_hand(store, monkeypatch):
    """/health calls `backlog()` from another thread than the indexer's, at any moment."""
    _record(store, {"alpha": 5})
    index = store.search_backend()
    seen: list[int] = []
    real_document = search_index.document

    def document_and_ask(path: str, request: str | None, response: str | None) -> tuple[str, str]:
        if not seen:
            asking = threading.Thread(target=lambda: seen.append(index.backlog()))
            asking.start()
            asking.join(10)
        return real_document(path, request, response)

    monkeypatch.setattr(search_index, "document", document_and_ask)
    assert index.index_next(100) == 5
    assert seen == [5]  # the chunk had not committed yet: its rows were still waiting
    assert index.backlog() == 0
    index.close()
