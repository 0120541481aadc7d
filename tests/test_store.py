"""The schema the migrations build: seed 001/002 tables, indexes, cascades, version recorded; on SQLite
and on PostgreSQL (the keyset indexes name the id there; search is a tsvector table)."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from chatledger.store import Store, migrate
from tests.postgres import any_store_url

store_url = any_store_url

SEED_INDEXES = {
    "idx_sessions_expires_at", "idx_sessions_chat_id", "idx_sessions_created_at",
    "idx_requests_session_id", "idx_requests_timestamp", "idx_requests_request_id", "idx_requests_created_at",
    "idx_responses_request_id", "idx_responses_session_id", "idx_responses_response_id",
    "idx_responses_timestamp", "idx_responses_created_at",
}


@pytest.fixture
def store(tmp_path, store_url):
    opened = Store.open(database_path=tmp_path / "nested" / "dir" / "ledger.db", database_url=store_url,
                        session_timeout_ms=1000)
    yield opened
    opened.close()


def _run(store, *statements: str) -> None:
    with store.engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))


def _scalar(store, sql: str) -> object:
    with store.engine.connect() as connection:
        return connection.execute(sa.text(sql)).scalar()


def test_fresh_database_gets_the_seed_schema(store):
    inspector = sa.inspect(store.engine)
    tables = set(inspector.get_table_names())
    assert {"metadata", "sessions", "requests", "responses", "settings", "usage_hourly"} <= tables
    # The search index: SQLite keeps it in a file of its own (search_index.py); PostgreSQL in the
    # database, with the queue of responses waiting to be indexed.
    assert ("search_index" in tables) == (store.dialect == "postgresql")
    assert ("search_pending" in tables) == (store.dialect == "postgresql")
    assert _scalar(store, "SELECT value FROM metadata WHERE key = 'ledger_id'")
    indexes = {i["name"]: i["column_names"] for table in ("sessions", "requests", "responses")
               for i in inspector.get_indexes(table)}
    assert set(indexes) >= SEED_INDEXES
    columns = {c["name"] for c in inspector.get_columns("requests")}
    assert {"session_id", "request_id", "timestamp", "method", "path", "openai_request",
            "model", "stream", "created_at"} <= columns
    columns = {c["name"] for c in inspector.get_columns("responses")}
    assert {"request_id", "session_id", "response_id", "timestamp", "openai_response", "cost",
            "parent_id", "completion_tokens", "prompt_tokens", "total_tokens", "finish_reason", "error",
            "duration_ms", "created_at"} <= columns
    columns = {c["name"] for c in inspector.get_columns("sessions")}
    assert {"id", "chat_id", "parent_id", "first_user_message", "message_count", "created_at", "updated_at",
            "expires_at"} <= columns
    assert _scalar(store, "SELECT value FROM metadata WHERE key = 'schema_version'") == \
        str(int(migrate.head_revision()))
    assert migrate.current_revision(store.engine) == migrate.head_revision()
    if store.dialect == "sqlite":
        connection = sqlite3.connect(store.database_path)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {r[1] for r in connection.execute("PRAGMA table_xinfo(requests)")} >= {"qwen_request"}
        assert {r[1] for r in connection.execute("PRAGMA table_xinfo(responses)")} >= {"qwen_response"}
        connection.close()
    else:
        # Keyset pages order by (key, id): PostgreSQL's indexes must name the id.
        assert indexes["idx_requests_timestamp"] == ["timestamp", "id"]
        assert indexes["idx_responses_timestamp"] == ["timestamp", "id"]
        assert indexes["idx_responses_duration"] == ["duration_ms", "id"]
        assert indexes["idx_sessions_created_at"] == ["created_at", "id"]
        search = {i["name"] for i in inspector.get_indexes("search_index")}
        assert "idx_search_index_document" in search


def _one_exchange(store) -> None:
    _run(store,
         "INSERT INTO sessions (id, session_key, message_count, created_at, updated_at, expires_at) "
         "VALUES ('s1', 's1', 1, 1, 1, 2)",
         "INSERT INTO requests (id, session_id, request_id, timestamp, method, path, openai_request, model, stream, "
         "created_at) VALUES (1, 's1', 'r1', 1, 'POST', '/v1/chat/completions', '{}', 'm', false, 1)",
         "INSERT INTO responses (id, request_id, session_id, response_id, timestamp, created_at, duration_ms) "
         "VALUES (1, 1, 's1', 'x1', 1, 1, 40)")


def test_deleting_a_session_cascades(store):
    _one_exchange(store)
    _run(store, "DELETE FROM sessions WHERE id = 's1'")
    assert _scalar(store, "SELECT COUNT(*) FROM requests") == 0
    assert _scalar(store, "SELECT COUNT(*) FROM responses") == 0


def test_a_deleted_response_leaves_its_rollup(store):
    from chatledger.store.rollups import UPSERT_USAGE, Exchange, RollupBatch

    batch = RollupBatch()
    batch.add(Exchange(1, "", "", None, False, False, None, None, None, None, 40))
    [row] = batch.rows()
    with store.engine.begin() as connection:
        connection.exec_driver_sql(UPSERT_USAGE if store.dialect == "sqlite" else UPSERT_USAGE.replace("?", "%s"),
                                   row)
    _one_exchange(store)
    if store.dialect == "postgresql":  # its search row goes with it (a foreign key)
        _run(store, "INSERT INTO search_index (id, prompt, response) VALUES (1, 'hello', 'world')")
    assert _scalar(store, "SELECT requests + h06 + unpriced FROM usage_hourly") == 3
    _run(store, "DELETE FROM responses WHERE id = 1")
    assert _scalar(store, "SELECT requests + h06 + unpriced + duration_ms_sum FROM usage_hourly") == 0
    if store.dialect == "postgresql":
        assert _scalar(store, "SELECT COUNT(*) FROM search_index") == 0


def test_reopening_is_idempotent(store, store_url):
    again = Store.open(database_path=store.database_path or store.location, database_url=store_url,
                       session_timeout_ms=1000)
    assert migrate.current_revision(again.engine) == migrate.head_revision()
    again.close()
