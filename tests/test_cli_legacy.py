"""`chatledger import legacy`: a seed-002 `request_logs` database into the store, losslessly and idempotently."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import pytest
from click.testing import CliRunner

from chatledger.cli import main
from chatledger.ops.legacy_rows import map_columns, to_ms
from chatledger.store.search_index import search_path
from tests.legacy_fixture import (
    BASE_SECONDS,
    SECONDS_APART,
    TOPICS,
    make_legacy_db,
    make_minimal_legacy_db,
    request_id_of,
)

ROWS = 10_000


def run(*args, env=None):
    return CliRunner().invoke(main, list(map(str, args)), env=env, catch_exceptions=False)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def query(path, sql, *params):
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def legacy_db(tmp_path_factory):
    return make_legacy_db(tmp_path_factory.mktemp("legacy") / "qwen_proxy.db", ROWS)


def test_imports_ten_thousand_rows_once(legacy_db, tmp_path):
    before = digest(legacy_db)
    target = tmp_path / "ledger.db"
    env = {"DATABASE_PATH": str(target)}
    started = time.monotonic()
    result = run("import", "legacy", legacy_db, env=env)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert f"read {ROWS}, imported {ROWS}, skipped 0" in result.output
    assert "10 rows repeated an earlier request_id" in result.output
    assert "request bodies were not JSON" in result.output
    assert elapsed < 10

    counts = {table: query(target, f"SELECT COUNT(*) FROM {table}")[0][0]
              for table in ("sessions", "requests", "responses")}
    assert counts == {"sessions": ROWS, "requests": ROWS, "responses": ROWS}

    # Seconds became milliseconds; ids and sessions follow the legacy row.
    (timestamp, session_id, method, path), = query(
        target, "SELECT timestamp, session_id, method, path FROM requests WHERE request_id = ?",
        "legacy-req-123")
    assert timestamp == (BASE_SECONDS + 123 * SECONDS_APART) * 1000
    assert session_id == "migrated-session-124"
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert query(target, "SELECT MIN(timestamp), MAX(timestamp) FROM requests")[0] == (
        BASE_SECONDS * 1000, (BASE_SECONDS + (ROWS - 1) * SECONDS_APART) * 1000)

    # Every response links to its request and to the same session; nothing dangles.
    assert query(target, """SELECT COUNT(*) FROM responses s JOIN requests r ON r.id = s.request_id
                            JOIN sessions ss ON ss.id = s.session_id WHERE r.session_id = s.session_id""")[0][0] == ROWS
    assert query(target, "PRAGMA foreign_key_check") == []
    assert query(target, "SELECT COUNT(*) FROM sessions WHERE message_count != 1")[0][0] == 0

    # Missing and repeated request ids still import, under deterministic names.
    assert query(target, "SELECT COUNT(*) FROM requests WHERE request_id GLOB 'legacy-[0-9a-f]*-*-*-*-*'")[0][0] == \
        sum(1 for index in range(ROWS) if request_id_of(index) is None)
    assert query(target, "SELECT COUNT(*) FROM requests WHERE request_id = 'legacy-req-998-legacy-1000'")[0][0] == 1

    # Bodies that are not JSON are kept as stored; errors, streams and usage carried over.
    assert query(target, "SELECT openai_request FROM requests WHERE request_id = 'legacy-req-2'")[0][0] == "not json {"
    assert query(target, """SELECT error, status_code, finish_reason FROM responses s JOIN requests r
                            ON r.id = s.request_id WHERE r.request_id = 'legacy-req-1'""")[0] == \
        ("upstream failed", 500, "error")
    stream_row = query(target, """SELECT r.stream, s.openai_response, s.provider_response, s.total_tokens
                                  FROM responses s JOIN requests r ON r.id = s.request_id
                                  WHERE r.request_id = 'legacy-req-3'""")[0]
    assert stream_row[0] == 1 and stream_row[3] == 15
    assert json.loads(stream_row[1])["choices"][0]["message"]["content"] == "Streamed answer."
    assert stream_row[2].startswith("data: ")
    assert query(target, "SELECT SUM(total_tokens) FROM responses")[0][0] == sum(
        query(legacy_db, "SELECT SUM(total_tokens) FROM request_logs")[0])

    # The recorder's bookkeeping was done too: hourly rollups and the search index.
    assert query(target, "SELECT SUM(requests), SUM(errors), SUM(total_tokens) FROM usage_hourly")[0] == (
        ROWS, query(target, "SELECT COUNT(*) FROM responses WHERE error IS NOT NULL")[0][0],
        query(target, "SELECT SUM(total_tokens) FROM responses")[0][0])
    assert query(search_path(target),
                 "SELECT COUNT(*) FROM search_index WHERE search_index MATCH '\"Question number 7\"'")[0][0] \
        == ROWS // TOPICS  # rows 7, 57, 107...: never a GET /v1/models or unparsable row

    # A second run finds everything already there.
    again = run("import", "legacy", legacy_db, env=env)
    assert again.exit_code == 0, again.output
    assert f"read {ROWS}, imported 0, skipped {ROWS}" in again.output
    assert query(target, "SELECT COUNT(*) FROM requests")[0][0] == ROWS
    assert query(target, "SELECT COUNT(*) FROM sessions")[0][0] == ROWS

    # The legacy file is untouched.
    assert digest(legacy_db) == before
    assert not any(legacy_db.with_name(legacy_db.name + suffix).exists() for suffix in ("-wal", "-shm", "-journal"))


def test_group_sessions_by_first_user_message(legacy_db, tmp_path):
    target = tmp_path / "grouped.db"
    result = run("import", "legacy", legacy_db, "--group-sessions", env={"DATABASE_PATH": str(target)})
    assert result.exit_code == 0, result.output
    # Chat rows share TOPICS first messages; GET /v1/models and unparsable bodies share "default".
    sessions = query(target, "SELECT COUNT(*), SUM(message_count) FROM sessions")[0]
    assert sessions == (TOPICS + 1, ROWS)
    (count,), = query(target, "SELECT message_count FROM sessions WHERE first_user_message = ?",
                      "Question number 7?")
    assert count == query(target, "SELECT COUNT(*) FROM requests WHERE openai_request LIKE ?",
                          '%"Question number 7?"%')[0][0]
    # Each answer became its session's parent; the next answer links to it.
    linked = query(target, """SELECT COUNT(*) FROM responses WHERE parent_id IS NOT NULL""")[0][0]
    assert linked > ROWS // 2


def test_group_sessions_split_after_the_timeout(tmp_path):
    legacy = make_legacy_db(tmp_path / "legacy.db", 400)
    target = tmp_path / "ledger.db"
    # The same question comes back every TOPICS * SECONDS_APART = 150 s: a 60 s timeout splits every time.
    env = {"DATABASE_PATH": str(target), "SESSION_TIMEOUT": "60000"}
    assert run("import", "legacy", legacy, "--group-sessions", env=env).exit_code == 0
    assert query(target, "SELECT COUNT(*) FROM sessions WHERE first_user_message = 'Question number 7?'")[0][0] == 8


def test_minimal_legacy_schema(tmp_path):
    legacy = make_minimal_legacy_db(tmp_path / "old.db", 10)
    target = tmp_path / "ledger.db"
    result = run("import", "legacy", legacy, env={"DATABASE_PATH": str(target)})
    assert result.exit_code == 0, result.output
    assert "read 10, imported 10, skipped 0" in result.output
    rows = query(target, "SELECT model, method, path, timestamp FROM requests ORDER BY id")
    assert rows[0] == ("qwen-turbo", "POST", "/v1/chat/completions", BASE_SECONDS * 1000)
    assert query(target, "SELECT COUNT(*) FROM responses WHERE total_tokens IS NOT NULL")[0][0] > 0


def test_not_a_legacy_database(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = CliRunner().invoke(main, ["import", "legacy", str(other)], env={"DATABASE_PATH": str(tmp_path / "l.db")})
    assert result.exit_code == 1
    assert "no request_logs table" in result.output and "Traceback" not in result.output


def test_column_mapping_and_times():
    assert map_columns(["ID", "created_at", "Request", "qwen_response", "latency_ms", "extra"]) == {
        "id": "ID", "timestamp": "created_at", "request_body": "Request", "provider_response": "qwen_response",
        "duration_ms": "latency_ms"}
    assert to_ms(1_761_869_496) == 1_761_869_496_000
    assert to_ms(1_761_869_496.25) == 1_761_869_496_250
    assert to_ms(1_761_869_496_000) == 1_761_869_496_000
    assert to_ms("1761869496") == 1_761_869_496_000
    assert to_ms("2025-10-31 00:00:00") == 1_761_868_800_000
    assert to_ms(None) is None and to_ms("yesterday") is None


def test_import_while_the_store_is_in_use(tmp_path):
    legacy = make_legacy_db(tmp_path / "legacy.db", 50)
    target = tmp_path / "ledger.db"
    assert run("db", "migrate", env={"DATABASE_PATH": str(target)}).exit_code == 0
    gateway = sqlite3.connect(target)  # a running gateway keeps its connection open
    gateway.execute("SELECT COUNT(*) FROM requests").fetchone()
    try:
        result = run("import", "legacy", legacy, env={"DATABASE_PATH": str(target)})
    finally:
        gateway.close()
    assert result.exit_code == 0, result.output
    assert "read 50, imported 50" in result.output
    # The index is a file of its own: a gateway holding the ledger open does not keep rows out of it.
    assert "not in the search index" not in result.output
    assert query(search_path(target), "SELECT COUNT(*) FROM search_index")[0][0] == 50


def test_a_wal_mode_legacy_file_is_left_alone(tmp_path):
    legacy = make_legacy_db(tmp_path / "legacy.db", 20)
    connection = sqlite3.connect(legacy)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    before = digest(legacy)
    result = run("import", "legacy", legacy, env={"DATABASE_PATH": str(tmp_path / "ledger.db")})
    assert result.exit_code == 0 and "imported 20" in result.output
    assert digest(legacy) == before
    assert sorted(path.name for path in tmp_path.glob("legacy.db*")) == ["legacy.db"]
