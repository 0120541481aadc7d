"""Streams cut short, by the client going away or by the upstream dropping the connection."""

from __future__ import annotations

import json
import time

import httpx

from tests.fakes import openai_server


def wait_for_rows(gateway, sql: str, count: int = 1, timeout: float = 10.0) -> list:
    """Rows written by the recorder after the client has gone: poll the file until they land."""
    deadline = time.monotonic() + timeout
    while True:
        rows = gateway.rows(sql)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def test_client_disconnect_mid_stream_is_recorded_as_cut(gateway, openai_upstream):
    body = {"model": "hang", "stream": True, "messages": [{"role": "user", "content": "one two three four"}]}
    received = b""
    with httpx.Client(timeout=10) as http, http.stream("POST", gateway.url + "/v1/chat/completions",
                                                       json=body) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
            if received.count(b"data:") >= 3:  # role chunk + two words, then the upstream stalls
                break
    # Leaving the `with` closed the connection mid-stream.
    [row] = wait_for_rows(gateway, "SELECT * FROM responses")
    assert row["finish_reason"] == "client_disconnected"
    stored = json.loads(row["openai_response"])
    assert stored["choices"][0]["message"]["content"] == "Echo: one"
    assert stored["choices"][0]["finish_reason"] == "client_disconnected"
    assert "disconnected" in row["error"] and row["duration_ms"] is not None
    # ... and the gateway hung up on the upstream instead of letting it generate for nobody.
    stalled = openai_upstream.app[openai_server.STALLED][-1]
    deadline = time.monotonic() + 10
    while stalled not in openai_upstream.app[openai_server.HUNG_UP] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stalled in openai_upstream.app[openai_server.HUNG_UP]


def test_upstream_dropping_mid_stream_ends_with_an_error_event(gateway):
    body = {"model": "drop", "stream": True, "messages": [{"role": "user", "content": "alpha beta gamma"}]}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
    events = [e for e in response.text.split("\n\n") if e.startswith("data: ")]
    last = json.loads(events[-1][6:])
    assert last["error"]["code"] == "upstream_unreachable"
    assert json.loads(events[1][6:])["choices"][0]["delta"]["content"] == "Echo:"
    [row] = gateway.rows("SELECT * FROM responses")
    assert row["error"] and row["finish_reason"] == "error"
    assert json.loads(row["openai_response"])["choices"][0]["message"]["content"].startswith("Echo:")
