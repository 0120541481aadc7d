"""Sessions per seed 003: MD5 of the first user message, scoped by the caller's key, with a timeout
(on SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import time

from tests.conftest import client_for
from tests.postgres import any_store_url

store_url = any_store_url


def _ask(client, *contents: str, **kwargs) -> None:
    messages = []
    for index, content in enumerate(contents):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": content})
    client.chat.completions.create(model="fake-gpt", messages=messages, **kwargs)


def test_a_conversation_is_one_session_with_linked_turns(gateway, client):
    _ask(client, "Plan a trip")
    _ask(client, "Plan a trip", "Sure, where?", "Paris")
    _ask(client, "Something else entirely")

    sessions = gateway.rows("SELECT * FROM sessions ORDER BY created_at")
    assert [s["message_count"] for s in sessions] == [2, 1]
    trip = sessions[0]
    assert trip["first_user_message"] == "Plan a trip"
    assert trip["expires_at"] == trip["updated_at"] + 30 * 60 * 1000
    responses = gateway.rows("SELECT response_id, parent_id FROM responses WHERE session_id = ? ORDER BY id",
                             trip["id"])
    assert responses[0]["parent_id"] is None and responses[1]["parent_id"] == responses[0]["response_id"]
    assert trip["parent_id"] == responses[1]["response_id"]
    assert trip["chat_id"] is not None


def test_session_id_is_the_md5_of_the_first_message_scoped_by_key(gateway):
    _ask(client_for(gateway, api_key="sk-alice"), "Hello")
    _ask(client_for(gateway, api_key="sk-bob"), "Hello")

    sessions = gateway.rows("SELECT id, api_key_hash FROM sessions")
    assert len(sessions) == 2
    for session in sessions:
        scoped = f"{session['api_key_hash']}\x00Hello"
        assert session["id"] == hashlib.md5(scoped.encode()).hexdigest()


def test_explicit_session_header_wins(gateway, client):
    _ask(client, "first topic", extra_headers={"X-Session-Id": "my-session"})
    _ask(client, "another topic", extra_headers={"X-Session-Id": "my-session"})
    [session] = gateway.rows("SELECT id, message_count FROM sessions")
    assert (session["id"], session["message_count"]) == ("my-session", 2)


def test_inactivity_starts_a_new_session(make_gateway, openai_upstream):
    gateway = make_gateway(openai_base_url=openai_upstream.url + "/v1", openai_api_key="k", session_timeout=0)
    client = client_for(gateway)
    _ask(client, "Same opener")
    # A request in the same millisecond is still inside a 0 ms session: let the clock move on first.
    first = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == first:
        time.sleep(0.0001)
    _ask(client, "Same opener", "ok", "again")
    sessions = gateway.rows("SELECT id, session_key, message_count FROM sessions ORDER BY created_at, id")
    assert len(sessions) == 2 and sessions[0]["session_key"] == sessions[1]["session_key"]
    assert all(s["message_count"] == 1 for s in sessions)


def test_a_session_that_expires_inside_one_batch_restarts(tmp_path, store_url):
    """A backlog written after an outage holds a conversation's turns from hours apart in one batch:
    the turn after the timeout opens a new session there too, as it would in a batch of its own."""
    from chatledger.store import Store
    from chatledger.store.records import RequestRecord, ResponseRecord

    timeout_ms = 60_000
    store = Store.open(database_path=tmp_path / "ledger.db", database_url=store_url, session_timeout_ms=timeout_ms)
    try:
        records = []
        for turn, at in enumerate((1_000_000, 1_000_000 + timeout_ms // 2, 1_000_000 + 5 * timeout_ms)):
            records.append(RequestRecord(f"turn-{turn}", at, "POST", "/v1/chat/completions", "chat", "Same opener",
                                         b'{"model": "m"}', None, "m", "openai", "m", False, None, None))
            records.append(ResponseRecord(f"turn-{turn}", f"answer-{turn}", at + 5, 200, 5,
                                          openai_response=b'{"choices": []}'))
        sink = store.sink()
        sink.write(records)
        sink.shutdown()
        with store.engine.connect() as connection:
            sessions = connection.exec_driver_sql(
                "SELECT session_key, message_count FROM sessions ORDER BY created_at").fetchall()
            by_turn = dict(connection.exec_driver_sql("SELECT request_id, session_id FROM requests").fetchall())
    finally:
        store.close()
    assert [count for _, count in sessions] == [2, 1]
    assert sessions[0][0] == sessions[1][0]  # one conversation, two sessions
    assert by_turn["turn-0"] == by_turn["turn-1"] != by_turn["turn-2"]
