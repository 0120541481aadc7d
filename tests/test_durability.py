"""Nothing lost: a SIGKILL under load, a store that cannot be written, a SIGTERM with a backlog; with the
recorder in the gateway's process and in a process of its own (WRITER_PROCESS)."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import client_for
from tests.gateway_server import GatewayProcess

# uvicorn re-raises SIGTERM after its graceful shutdown, so a clean stop may report the signal.
CLEAN_EXIT = (0, -signal.SIGTERM)


@pytest.fixture(params=[False, True], ids=["recorder-thread", "recorder-process"])
def writer_process(request: pytest.FixtureRequest) -> bool:
    return request.param


def _env(writer_process: bool, **values: str) -> dict[str, str]:
    return {**values, "WRITER_PROCESS": "true" if writer_process else "false"}


def _chat(url: str, content: str, stream: bool, http: httpx.Client) -> bool:
    """True only if the client received the whole answer."""
    body = {"model": "mock-1", "stream": stream, "messages": [{"role": "user", "content": content}]}
    try:
        response = http.post(url + "/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    if stream:
        return response.text.endswith("data: [DONE]\n\n")
    return response.json()["choices"][0]["message"]["content"].endswith(content)


def _recorded(db_path) -> Counter[str]:
    """How many times each user message was recorded with a successful answer."""
    connection = sqlite3.connect(db_path)
    try:
        rows = connection.execute(
            "SELECT json_extract(r.openai_request, '$.messages[0].content') FROM requests r "
            "JOIN responses s ON s.request_id = r.id WHERE s.error IS NULL").fetchall()
    finally:
        connection.close()
    return Counter(row[0] for row in rows)


def _recorded_contents(db_path) -> set[str]:
    return set(_recorded(db_path))


def test_sigkill_under_load_loses_no_answered_exchange(tmp_path, writer_process):
    gateway = GatewayProcess(tmp_path, _env(writer_process)).start()
    answered: list[str] = []
    enough = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(timeout=10) as http:
            for i in range(10_000):
                content = f"kill-test {worker}-{i}"
                if _chat(gateway.url, content, stream=i % 2 == 1, http=http):
                    with lock:
                        answered.append(content)
                        if len(answered) >= 400:
                            enough.set()
                elif enough.is_set():
                    return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    assert enough.wait(60), "load did not get going"
    gateway.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(30)

    with lock:
        received = set(answered)
    assert len(received) >= 400
    # The restarted gateway opens the same files: what its journal holds beyond the last commit (answers
    # that went out before their rows were committed) is written before anything new, and only once.
    restarted = GatewayProcess(tmp_path, _env(writer_process), port=gateway.port).start()
    try:
        with httpx.Client(timeout=10) as http:
            assert _chat(restarted.url, "after restart", stream=False, http=http)
    finally:
        assert restarted.stop() in CLEAN_EXIT
    recorded = _recorded(gateway.db_path)
    assert received - set(recorded) == set()
    assert "after restart" in recorded
    assert max(recorded.values()) == 1, "an exchange was recorded twice"


def _hold_write_lock(db_path) -> sqlite3.Connection:
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


def test_unwritable_store_keeps_answering_and_catches_up(make_gateway, writer_process):
    gateway = make_gateway(writer_ack_timeout_ms=200, sqlite_busy_timeout_ms=100, writer_process=writer_process)
    client = client_for(gateway)
    client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "before"}])
    assert gateway.count("responses") == 1

    blocker = _hold_write_lock(gateway.db_path)
    try:
        for i in range(20):
            reply = client.chat.completions.create(model="mock-1", stream=i % 2 == 0,
                                                   messages=[{"role": "user", "content": f"locked {i}"}])
            if i % 2:
                assert reply.choices[0].message.content.endswith(f"locked {i}")
            else:
                assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices).endswith(f"locked {i}")
        # Answers do not wait for a locked store; its writer finds out when its busy timeout expires.
        deadline = time.monotonic() + 10
        health = httpx.get(gateway.url + "/health").json()
        while health["status"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.02)
            health = httpx.get(gateway.url + "/health").json()
        assert health["status"] == "degraded" and "locked" in health["store"]["last_error"]
        assert gateway.app.writer.stats.failures > 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    deadline = time.monotonic() + 20
    while gateway.count("responses") < 21 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.count("requests") == 21 and gateway.count("responses") == 21
    assert httpx.get(gateway.url + "/health").json()["status"] == "ok"
    assert _recorded_contents(gateway.db_path) == {"before", *(f"locked {i}" for i in range(20))}


def test_sigterm_drains_the_backlog_before_exit(tmp_path, writer_process):
    gateway = GatewayProcess(tmp_path, _env(writer_process, WRITER_ACK_TIMEOUT_MS="100",
                                            SQLITE_BUSY_TIMEOUT_MS="50")).start()
    with httpx.Client(timeout=10) as http:
        assert _chat(gateway.url, "warm-up", stream=False, http=http)
        blocker = _hold_write_lock(gateway.db_path)
        for i in range(10):
            assert _chat(gateway.url, f"backlog {i}", stream=bool(i % 2), http=http)
    gateway.process.send_signal(signal.SIGTERM)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert gateway.stop(timeout=60) in CLEAN_EXIT
    assert _recorded_contents(gateway.db_path) == {"warm-up", *(f"backlog {i}" for i in range(10))}


def test_a_gateway_started_again_after_a_clean_stop_records_everything(tmp_path, writer_process):
    """A clean stop leaves no journal segment but the progress file: the next start's segments must
    come after it, or a recorder that follows the journal by position skips what they hold."""
    for run in range(3):
        gateway = GatewayProcess(tmp_path, _env(writer_process)).start()
        with httpx.Client(timeout=10) as http:
            for i in range(3):
                assert _chat(gateway.url, f"run {run} turn {i}", stream=bool(i % 2), http=http)
        assert gateway.stop(timeout=60) in CLEAN_EXIT
        assert _recorded_contents(gateway.db_path) == {f"run {r} turn {i}" for r in range(run + 1) for i in range(3)}


def test_an_answer_nobody_waits_for_reaches_the_database_file_by_itself(tmp_path, writer_process):
    """With WRITER_ACK=journal the answer goes out first and its rows follow with the next timed
    batch: another reader of the file (sqlite3, a backup) sees them without anyone asking the
    gateway to settle."""
    gateway = GatewayProcess(tmp_path, _env(writer_process)).start()
    try:
        with httpx.Client(timeout=10) as http:
            assert _chat(gateway.url, "on its own", stream=False, http=http)
            assert _chat(gateway.url, "streamed on its own", stream=True, http=http)
        deadline = time.monotonic() + 10
        while _recorded_contents(gateway.db_path) != {"on its own", "streamed on its own"}:
            assert time.monotonic() < deadline, "the rows never reached the file"
            time.sleep(0.01)
    finally:
        assert gateway.stop(timeout=60) in CLEAN_EXIT
