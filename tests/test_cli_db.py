"""`chatledger db ...` on real SQLite files: migrate, status, backup, restore, check, vacuum, stats, errors."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from chatledger.cli import main
from chatledger.sessions import first_user_text
from chatledger.store import Store, migrate
from chatledger.store.records import RequestRecord, ResponseRecord
from chatledger.store.sqlite_sink import SQLiteSink

T0 = 1_760_000_000_000  # 2025-10-09 08:53:20 UTC


def exchange(n: int, *, model: str = "gpt-4o-mini", text: str | None = None, timestamp: int | None = None,
             prompt: int = 10, completion: int = 5, status: int = 200, error: str | None = None,
             tool_calls: list | None = None, endpoint: str = "chat", session: str | None = None,
             stream: bool = False) -> tuple[RequestRecord, ResponseRecord]:
    """One recorded exchange, as the gateway hands it to the recorder."""
    timestamp = T0 + n * 1000 if timestamp is None else timestamp
    if endpoint == "embeddings":
        body = {"model": model, "input": text or f"embed {n}"}
        answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                  "model": model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        path = "/v1/embeddings"
    else:
        body = {"model": model, "messages": [{"role": "user", "content": text or f"question {n}"}]}
        if tool_calls:
            body["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        message = {"role": "assistant", "content": None if tool_calls else f"answer {n}", "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        answer = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": timestamp // 1000, "model": model,
                  "choices": [{"index": 0, "message": message,
                               "finish_reason": "tool_calls" if tool_calls else "stop"}],
                  "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}}
        path = "/v1/chat/completions"
    if status >= 400:
        answer = {"error": {"message": error or "upstream failed", "type": "server_error"}}
    request = RequestRecord(request_id=f"req-{n}", timestamp=timestamp, method="POST", path=path, endpoint=endpoint,
                            first_user_text=first_user_text(body, endpoint), openai_request=orjson.dumps(body),
                            provider_request=None, model=model,
                            provider="openai", upstream_model=model, stream=stream, session_hint=session,
                            api_key_hash=None)
    response = ResponseRecord(request_id=f"req-{n}", response_id=f"resp-{n}", timestamp=timestamp + 250,
                              status_code=status, duration_ms=250, openai_response=orjson.dumps(answer),
                              error=error)
    return request, response


def record(database: Path, exchanges: list[tuple[RequestRecord, ResponseRecord]]) -> None:
    Store.open(database_path=database, session_timeout_ms=1_800_000).close()
    sink = SQLiteSink(database, session_timeout_ms=1_800_000)
    try:
        sink.write([item for pair in exchanges for item in pair])
    finally:
        sink.shutdown()


def invoke(database: Path, *args: object) -> object:
    env = {"DATABASE_PATH": str(database), "SQLITE_BUSY_TIMEOUT_MS": "200"}
    return CliRunner().invoke(main, [str(arg) for arg in args], env=env)


def count(database: Path, table: str = "requests") -> int:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    database = tmp_path / "data" / "chatledger.db"
    record(database, [exchange(n, model="gpt-4o-mini" if n % 3 else "qwen-turbo") for n in range(30)])
    return database


def test_migrate_and_status(tmp_path):
    database = tmp_path / "fresh.db"
    result = invoke(database, "db", "migrate")
    assert result.exit_code == 0, result.output
    assert f"migrated from new database to revision {migrate.head_revision()}" in result.output
    assert "already at revision" in invoke(database, "db", "migrate").output
    status = invoke(database, "db", "status")
    assert status.exit_code == 0, status.output
    assert f"revision:       {migrate.head_revision()}" in status.output
    assert "run `chatledger db migrate`" not in status.output
    assert "journal mode:   WAL" in status.output
    assert str(database.resolve()) in status.output
    assert "schema_version: " in status.output


def test_status_of_an_unmigrated_database(tmp_path):
    database = tmp_path / "empty.db"
    sqlite3.connect(database).execute("CREATE TABLE x (y)").connection.close()
    result = invoke(database, "db", "status")
    assert result.exit_code == 0
    assert "revision:       (none)" in result.output and "run `chatledger db migrate`" in result.output


def test_backup_while_another_connection_writes(ledger, tmp_path):
    stop = threading.Event()
    written = []

    def write() -> None:
        sink = SQLiteSink(ledger, session_timeout_ms=1_800_000)
        n = 1000
        while not stop.is_set():
            sink.write([item for k in range(20) for item in exchange(n + k, text=f"busy {n + k}")])
            n += 20
            written.append(n)
        sink.shutdown()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 5:
            threading.Event().wait(0.01)
        before = count(ledger)
        result = invoke(ledger, "db", "backup", tmp_path / "backups" / "copy.db")
        after = len(written)
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.output
    copy = tmp_path / "backups" / "copy.db"
    assert "integrity ok" in result.output and f"{copy.stat().st_size} bytes" in result.output
    connection = sqlite3.connect(copy)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
        rows = connection.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        assert connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == rows
    finally:
        connection.close()
    assert before <= rows <= 30 + 20 * after
    assert not Path(str(copy) + ".partial").exists()
    # An existing file is not replaced without --force; a directory gets a timestamped name.
    assert invoke(ledger, "db", "backup", copy).exit_code == 1
    assert invoke(ledger, "db", "backup", copy, "--force").exit_code == 0
    assert invoke(ledger, "db", "backup", tmp_path / "backups").exit_code == 0
    assert len(list((tmp_path / "backups").glob("chatledger-*.db"))) == 1


def test_restore_round_trip(ledger, tmp_path):
    copy = tmp_path / "copy.db"
    assert invoke(ledger, "db", "backup", copy).exit_code == 0
    record(ledger, [exchange(n) for n in range(100, 110)])
    assert count(ledger) == 40
    result = invoke(ledger, "db", "restore", copy)
    assert result.exit_code == 0, result.output
    assert "restored" in result.output and "(30 requests)" in result.output
    assert count(ledger) == 30
    previous = ledger.with_name(ledger.name + ".before-restore")
    assert count(previous) == 40
    assert not ledger.with_name(ledger.name + "-wal").exists()
    assert invoke(ledger, "db", "check").exit_code == 0
    # The restored store works for the recorder again.
    record(ledger, [exchange(200)])
    assert count(ledger) == 31


def test_restore_refuses_bad_backups_and_a_busy_database(ledger, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    result = invoke(ledger, "db", "restore", junk)
    assert result.exit_code == 1 and "not a SQLite database" in result.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = invoke(ledger, "db", "restore", other)
    assert result.exit_code == 1 and "not a chatledger database" in result.output
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(ledger.read_bytes())
    corrupt_pages(corrupt)
    result = invoke(ledger, "db", "restore", corrupt)
    assert result.exit_code == 1 and "corrupt" in result.output

    copy = tmp_path / "copy.db"
    assert invoke(ledger, "db", "backup", copy).exit_code == 0
    gateway = sqlite3.connect(ledger)  # an open connection, as a running gateway holds
    gateway.execute("SELECT COUNT(*) FROM requests").fetchone()
    try:
        result = invoke(ledger, "db", "restore", copy)
        assert result.exit_code == 1 and "in use" in result.output and "Traceback" not in result.output
    finally:
        gateway.close()
    assert invoke(ledger, "db", "restore", copy).exit_code == 0


def corrupt_pages(database: Path) -> None:
    """Overwrite b-tree pages in the middle of the file, leaving the header intact."""
    connection = sqlite3.connect(database)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size, pages = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count"))
    connection.close()
    data = bytearray(database.read_bytes())
    for page in range(2, pages, 3):
        start = page * page_size
        data[start:start + 64] = b"\xff" * 64
    database.write_bytes(bytes(data))


def test_check_healthy_and_corrupted(ledger):
    result = invoke(ledger, "db", "check")
    assert result.exit_code == 0 and result.output.strip().endswith(": ok")
    corrupt_pages(ledger)
    result = invoke(ledger, "db", "check")
    assert result.exit_code == 1, result.output
    assert "problem(s) found" in result.output or "corrupt" in result.output
    assert "Traceback" not in result.output


def test_check_reports_foreign_key_violations(ledger):
    connection = sqlite3.connect(ledger)
    connection.execute("PRAGMA foreign_keys=OFF")
    connection.execute("UPDATE requests SET session_id = 'gone' WHERE id = 1")
    connection.commit()
    connection.close()
    result = invoke(ledger, "db", "check")
    assert result.exit_code == 1
    assert "foreign key: requests row 1 references a missing sessions row" in result.output


def test_stats(ledger):
    record(ledger, [exchange(500, model="qwen-turbo", status=500, error="boom")])
    result = invoke(ledger, "db", "stats")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "sessions:  31" in lines and "requests:  31" in lines and "responses: 31" in lines
    assert "oldest:    2025-10-09 08:53:20.000 UTC" in lines
    assert "newest:    2025-10-09 09:01:40.000 UTC" in lines
    per_model = {line.split()[0]: line.split()[1:] for line in lines[lines.index("per model:") + 1:]}
    assert per_model["gpt-4o-mini"][:5] == ["20", "requests", "0", "errors", "300"]
    assert per_model["qwen-turbo"][:5] == ["11", "requests", "1", "errors", "150"]
    assert "wal" in result.output


def test_vacuum_reclaims_space(ledger):
    record(ledger, [exchange(n, text="x" * 20_000) for n in range(1000, 1100)])
    connection = sqlite3.connect(ledger)
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("DELETE FROM sessions WHERE first_user_message LIKE 'xxx%'")
    connection.commit()
    connection.close()
    result = invoke(ledger, "db", "vacuum")
    assert result.exit_code == 0, result.output
    assert "vacuuming" in result.output
    before = int(result.output.split("before: ")[1].split()[0])
    after = int(result.output.split("after:  ")[1].split()[0])
    assert after < before - 1_000_000
    assert count(ledger) == 30
    assert invoke(ledger, "db", "check").exit_code == 0


@pytest.mark.parametrize("command", [("db", "status"), ("db", "stats"), ("db", "check"), ("db", "vacuum"),
                                     ("db", "backup", "copy.db"), ("export", "jsonl"), ("export", "session", "x"),
                                     ("report", "billing", "--from", "2025-01-01", "--to", "2025-12-31")])
def test_missing_random_and_locked_databases(tmp_path, command):
    missing = tmp_path / "nowhere.db"
    result = invoke(missing, *command)
    assert result.exit_code == 1
    assert f"database {missing} does not exist" in result.output and "Traceback" not in result.output
    assert not missing.exists()

    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(64 * 1024))
    result = invoke(junk, *command)
    assert result.exit_code == 1
    assert "is not a SQLite database" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2

    locked = tmp_path / "locked.db"
    record(locked, [exchange(1)])
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO settings VALUES ('k', 'v', 0)")
    try:
        result = invoke(locked, *command)
    finally:
        holder.close()
    assert result.exit_code == 1
    assert "is locked by another process" in result.output and "Traceback" not in result.output


def test_migrate_refuses_junk_locked_and_legacy_files(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(16 * 1024))
    result = invoke(junk, "db", "migrate")
    assert result.exit_code == 1 and "is not a SQLite database" in result.output
    legacy = tmp_path / "legacy.db"
    sqlite3.connect(legacy).execute("CREATE TABLE request_logs (id INTEGER PRIMARY KEY)").connection.close()
    result = invoke(legacy, "db", "migrate")
    assert result.exit_code == 1 and "chatledger import legacy" in result.output
    locked = tmp_path / "locked.db"
    sqlite3.connect(locked).execute("CREATE TABLE t (x)").connection.close()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = invoke(locked, "db", "migrate")
    finally:
        holder.close()
    assert result.exit_code == 1 and "is locked by another process" in result.output


def test_restore_with_force_while_in_use(ledger, tmp_path):
    copy = tmp_path / "copy.db"
    assert invoke(ledger, "db", "backup", copy).exit_code == 0
    record(ledger, [exchange(300)])
    other = sqlite3.connect(ledger)
    other.execute("SELECT COUNT(*) FROM requests").fetchone()
    try:
        result = invoke(ledger, "db", "restore", copy, "--force")
    finally:
        other.close()
    assert result.exit_code == 0, result.output
    assert count(ledger) == 30
    assert count(ledger.with_name(ledger.name + ".before-restore")) == 31


def test_restoring_an_old_backup_migrates_it_and_rebuilds_rollups(ledger, tmp_path):
    old = tmp_path / "old.db"
    store = Store.open(database_path=old, session_timeout_ms=1_800_000, run_migrations=False)
    migrate.upgrade(store.engine, "0001")
    store.close()
    connection = sqlite3.connect(old)
    connection.execute("INSERT INTO sessions (id, session_key, message_count, created_at, updated_at, expires_at) "
                       "VALUES ('s', 's', 2, ?, ?, ?)", (T0, T0, T0))
    for n in (1, 2):
        connection.execute("INSERT INTO requests (id, session_id, request_id, timestamp, method, path, "
                           "openai_request, model, stream, created_at) VALUES (?, 's', ?, ?, 'POST', "
                           "'/v1/chat/completions', '{}', 'gpt-4o-mini', 0, ?)", (n, f"old-{n}", T0, T0))
        connection.execute("INSERT INTO responses (request_id, session_id, response_id, timestamp, prompt_tokens, "
                           "completion_tokens, total_tokens, duration_ms, created_at) "
                           "VALUES (?, 's', ?, ?, 7, 3, 10, 100, ?)", (n, f"old-resp-{n}", T0, T0))
    connection.commit()
    connection.close()

    result = invoke(ledger, "db", "restore", old)
    assert result.exit_code == 0, result.output
    assert f"from revision 0001 to {migrate.head_revision()}; usage rollups rebuilt" in result.output
    connection = sqlite3.connect(ledger)
    try:
        assert connection.execute("SELECT SUM(requests), SUM(total_tokens) FROM usage_hourly").fetchone() == (2, 20)
    finally:
        connection.close()
    assert invoke(ledger, "db", "check").exit_code == 0
