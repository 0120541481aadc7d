"""Recorders on one SQLite file (`--workers N`) take turns through a lock file, not SQLite's sleeping
busy handler: concurrent batches all land once, and a turn held past the busy timeout fails the write
as a locked database would (the writer keeps the batch and retries)."""

from __future__ import annotations

import threading

import pytest

from chatledger.store import Store
from chatledger.store.records import RequestRecord, ResponseRecord
from chatledger.store.sqlite_sink import WriterTurn
from chatledger.store.writer import TransientStoreError


def _exchange(tag: str) -> list[RequestRecord | ResponseRecord]:
    request = RequestRecord(f"q-{tag}", 1_000, "POST", "/v1/chat/completions", "chat", f"conversation {tag}",
                            b'{"model": "m"}', None, "m", "mock", "m", False, None, None)
    return [request, ResponseRecord(f"q-{tag}", f"r-{tag}", 1_001, 200, 3, b'{"choices": []}')]


def test_recorders_on_one_file_take_turns(tmp_path):
    store = Store.open(database_path=tmp_path / "ledger.db", session_timeout_ms=60_000, busy_timeout_ms=200)
    sinks = [store.sink(), store.sink()]
    failures: list[BaseException] = []

    def write(number: int) -> None:
        try:
            for batch in range(60):
                sinks[number].write(_exchange(f"{number}-{batch}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert failures == []
        with store.engine.connect() as connection:
            count = connection.exec_driver_sql("SELECT COUNT(DISTINCT response_id), COUNT(*) FROM responses").one()
        assert tuple(count) == (120, 120)
    finally:
        for sink in sinks:
            sink.shutdown()
        store.close()


def test_a_turn_held_past_the_busy_timeout_fails_the_write_for_a_retry(tmp_path):
    database = tmp_path / "ledger.db"
    store = Store.open(database_path=database, session_timeout_ms=60_000, busy_timeout_ms=50)
    sink = store.sink()
    other = WriterTurn(database.with_name(database.name + "-writer.lock"), 50)
    try:
        with other, pytest.raises(TransientStoreError, match="locked"):
            sink.write(_exchange("held"))
        sink.write(_exchange("held"))  # the same batch, once the turn is free
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT COUNT(*) FROM responses").scalar() == 1
    finally:
        other.close()
        sink.shutdown()
        store.close()
