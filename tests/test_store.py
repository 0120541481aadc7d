"""The schema the migrations build: seed 001/002 tables, indexes, cascades, WAL, version recorded."""

from __future__ import annotations

import sqlite3

import pytest

from chatledger.store import Store, migrate

SEED_INDEXES = {
    "idx_sessions_expires_at", "idx_sessions_chat_id", "idx_sessions_created_at",
    "idx_requests_session_id", "idx_requests_timestamp", "idx_requests_request_id", "idx_requests_created_at",
    "idx_responses_request_id", "idx_responses_session_id", "idx_responses_response_id",
    "idx_responses_timestamp", "idx_responses_created_at",
}


@pytest.fixture
def store(tmp_path):
    opened = Store.open(database_path=tmp_path / "nested" / "dir" / "ledger.db", session_timeout_ms=1000)
    yield opened
    opened.close()


def _connect(store) -> sqlite3.Connection:
    connection = sqlite3.connect(store.database_path)
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def test_fresh_database_gets_the_seed_schema(store):
    connection = _connect(store)
    tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"metadata", "sessions", "requests", "responses", "settings"} <= tables
    indexes = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert indexes >= SEED_INDEXES
    columns = {r[1] for r in connection.execute("PRAGMA table_xinfo(requests)")}
    assert {"session_id", "request_id", "timestamp", "method", "path", "openai_request", "qwen_request",
            "model", "stream", "created_at"} <= columns
    columns = {r[1] for r in connection.execute("PRAGMA table_xinfo(responses)")}
    assert {"request_id", "session_id", "response_id", "timestamp", "qwen_response", "openai_response",
            "parent_id", "completion_tokens", "prompt_tokens", "total_tokens", "finish_reason", "error",
            "duration_ms", "created_at"} <= columns
    columns = {r[1] for r in connection.execute("PRAGMA table_info(sessions)")}
    assert {"id", "chat_id", "parent_id", "first_user_message", "message_count", "created_at", "updated_at",
            "expires_at"} <= columns
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = connection.execute("SELECT value FROM metadata WHERE key = 'schema_version'").fetchone()[0]
    assert version == str(int(migrate.head_revision()))
    assert migrate.current_revision(store.engine) == migrate.head_revision()


def test_deleting_a_session_cascades(store):
    connection = _connect(store)
    with connection:
        connection.execute("INSERT INTO sessions (id, session_key, message_count, created_at, updated_at, "
                           "expires_at) VALUES ('s1', 's1', 1, 1, 1, 2)")
        connection.execute("INSERT INTO requests (session_id, request_id, timestamp, method, path, openai_request, "
                           "model, stream, created_at) VALUES ('s1', 'r1', 1, 'POST', '/v1/chat/completions', "
                           "'{}', 'm', 0, 1)")
        connection.execute("INSERT INTO responses (request_id, session_id, response_id, timestamp, created_at) "
                           "VALUES (1, 's1', 'x1', 1, 1)")
    with connection:
        connection.execute("DELETE FROM sessions WHERE id = 's1'")
    assert connection.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
    assert connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 0


def test_reopening_is_idempotent(store, tmp_path):
    again = Store.open(database_path=store.database_path, session_timeout_ms=1000)
    assert migrate.current_revision(again.engine) == migrate.head_revision()
    again.close()
