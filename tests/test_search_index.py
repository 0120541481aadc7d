"""The search index follows the ledger: every turn indexed once, deleted sessions forgotten, and on
SQLite a file of its own that rebuilds itself, catches up after a crash and never keeps text the
ledger no longer has."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx

from chatledger.store import Store, search_index
from chatledger.store.search_index import SQLiteSearchIndex, search_path
from tests.conftest import client_for
from tests.postgres import any_store_url

store_url = any_store_url  # the gateway test runs on both backends; the file tests are SQLite's own


def _hits(gateway, term: str) -> list[dict]:
    if gateway.engine.dialect.name == "postgresql":
        return gateway.rows("SELECT id AS rowid, prompt, response FROM search_index "
                            "WHERE document @@ plainto_tsquery('simple', :term)", term=term)
    path = search_path(gateway.db_path)
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(
            "SELECT rowid, prompt, response FROM search_index WHERE search_index MATCH ?", (f'"{term}"',))]


def _eventually(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the search index did not catch up"
        time.sleep(0.02)


def test_each_turn_is_indexed_once_and_a_deleted_session_leaves_the_index(make_gateway):
    gateway = make_gateway()
    client = client_for(gateway)
    history = [{"role": "system", "content": "You are a zebra expert."},
               {"role": "user", "content": "Tell me about quagga stripes"}]
    first = client.chat.completions.create(model="mock-1", messages=history)
    history += [first.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": "And okapi legs?"}]
    client.chat.completions.create(model="mock-1", messages=history)
    _eventually(lambda: _hits(gateway, "okapi"))

    # Turn two resends turn one; only its new message is indexed, so each term is found once.
    assert len(_hits(gateway, "quagga")) == len(_hits(gateway, "zebra")) == len(_hits(gateway, "okapi")) == 1
    [second] = _hits(gateway, "okapi")
    assert second["rowid"] != _hits(gateway, "quagga")[0]["rowid"]
    assert second["prompt"] == "And okapi legs?" and "okapi" in second["response"]
    found = httpx.get(gateway.url + "/v1/search", params={"q": "okapi"}).json()["data"]
    assert [hit["id"] for hit in found] == [second["rowid"]]

    [session] = gateway.rows("SELECT id FROM sessions")
    assert httpx.delete(f"{gateway.url}/v1/sessions/{session['id']}").status_code == 200
    # Searches join the ledger: the deleted turns are gone from the results at once...
    assert httpx.get(gateway.url + "/v1/search", params={"q": "okapi"}).json()["data"] == []
    assert gateway.count("responses") == 0
    # ... and from the index itself as soon as the indexer has taken them out (PostgreSQL: at once).
    _eventually(lambda: _hits(gateway, "quagga") == [] and _hits(gateway, "okapi") == [])


# -- SQLite: the index file ----------------------------------------------------------------------------


def _ledger(tmp_path: Path, exchanges: int) -> Path:
    path = tmp_path / "ledger.db"
    store = Store.open(database_path=path, session_timeout_ms=60_000)
    store.close()
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("INSERT INTO sessions (id, session_key, message_count, created_at, updated_at, "
                           "expires_at) VALUES ('s', 's', 1, 1, 1, 2)")
        for index in range(1, exchanges + 1):
            _add(connection, index, f"find the narwhal number{index}", f"a tusked whale, answer{index}")
        connection.commit()
    return path


def _add(connection: sqlite3.Connection, index: int, question: str, answer: str) -> None:
    connection.execute(
        "INSERT INTO requests (id, session_id, request_id, timestamp, method, path, openai_request, model, "
        "stream, created_at) VALUES (?, 's', ?, 1, 'POST', '/v1/chat/completions', ?, 'm', 0, 1)",
        (index, f"r{index}", f'{{"messages": [{{"role": "user", "content": "{question}"}}]}}'))
    connection.execute(
        "INSERT INTO responses (id, request_id, session_id, response_id, timestamp, openai_response, created_at) "
        "VALUES (?, ?, 's', ?, 1, ?, 1)",
        (index, index, f"x{index}", f'{{"choices": [{{"message": {{"content": "{answer}"}}}}]}}'))


def _indexed(ledger: Path, term: str = "narwhal") -> list[int]:
    with closing(sqlite3.connect(search_path(ledger))) as connection:
        return [row[0] for row in connection.execute(
            "SELECT rowid FROM search_index WHERE search_index MATCH ? ORDER BY rowid", (term,))]


def test_rows_the_index_has_not_seen_are_indexed_from_the_ledger(tmp_path):
    """What a crash (or an older gateway) left unindexed is read back from the rows."""
    ledger = _ledger(tmp_path, 5)
    index = SQLiteSearchIndex(ledger)
    assert index.backlog() == 5
    assert index.index_next(3) == 3 and index.index_next(3) == 2 and index.index_next(3) == 0
    assert index.backlog() == 0
    index.close()
    assert _indexed(ledger) == [1, 2, 3, 4, 5] and _indexed(ledger, "answer4") == [4]
    assert search_path(ledger) == tmp_path / "ledger-search.db"

    with closing(sqlite3.connect(ledger)) as connection:  # more rows while no indexer ran
        _add(connection, 6, "the narwhal again", "still tusked")
        connection.commit()
    again = SQLiteSearchIndex(ledger)
    assert again.watermark == 5 and again.catch_up() == 1
    again.close()
    assert _indexed(ledger) == [1, 2, 3, 4, 5, 6]


def test_an_index_of_another_or_an_older_ledger_is_rebuilt(tmp_path):
    ledger = _ledger(tmp_path, 4)
    index = SQLiteSearchIndex(ledger)
    index.catch_up()
    index.close()

    # An older backup restored in its place: fewer responses than the index has seen.
    with closing(sqlite3.connect(ledger)) as connection:
        connection.execute("DELETE FROM responses WHERE id > 2")
        connection.commit()
    rebuilt = SQLiteSearchIndex(ledger)
    assert rebuilt.watermark == 0 and rebuilt.catch_up() == 2
    rebuilt.close()
    assert _indexed(ledger) == [1, 2]

    # Another ledger altogether under the same name.
    with closing(sqlite3.connect(ledger)) as connection:
        connection.execute("UPDATE metadata SET value = 'another-ledger' WHERE key = 'ledger_id'")
        connection.commit()
    other = SQLiteSearchIndex(ledger)
    assert other.watermark == 0
    other.close()
    assert _indexed(ledger) == []


def test_rows_deleted_behind_the_index_leave_it(tmp_path):
    ledger = _ledger(tmp_path, 6)
    index = SQLiteSearchIndex(ledger)
    index.catch_up()
    with closing(sqlite3.connect(ledger)) as connection:  # SQL typed by hand: no `forget`
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("DELETE FROM responses WHERE id IN (2, 5)")
        connection.commit()
    assert index.tidy() == 2 and index.tidy() == 0
    assert _indexed(ledger) == [1, 3, 4, 6]
    index.forget([1, 6])  # what DELETE /v1/sessions hands the indexer
    index.close()
    assert _indexed(ledger) == [3, 4]


def test_a_row_deleted_while_its_chunk_is_indexed_does_not_stay(tmp_path, monkeypatch):
    """The race with DELETE /v1/sessions: rows read, then deleted from the ledger (and forgotten, before
    they were there to forget) before they are written into the index. The check after each chunk
    takes them out again."""
    ledger = _ledger(tmp_path, 3)
    index = SQLiteSearchIndex(ledger)
    real_document = search_index.document
    deleted = []

    def document_then_delete(path: str, request: str | None, response: str | None) -> tuple[str, str]:
        if not deleted:
            with closing(sqlite3.connect(ledger)) as connection:
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("DELETE FROM sessions WHERE id = 's'")
                connection.commit()
            deleted.append(True)
        return real_document(path, request, response)

    monkeypatch.setattr(search_index, "document", document_then_delete)
    assert index.index_next(10) == 3
    index.close()
    assert _indexed(ledger) == []
