"""WRITER_PROCESS=true: the recorder in a process of its own, fed by the gateway's journal (SQLite and
PostgreSQL). What the gateway-level durability tests check for it is in test_durability.py."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from chatledger.config import Settings
from chatledger.store.journal import Journal, claim_slot
from chatledger.store.recorder_client import RecorderProcess, recorder_spec
from chatledger.store.records import RequestRecord
from tests.conftest import client_for
from tests.gateway_server import GatewayThread
from tests.postgres import any_store_url

store_url = any_store_url


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _recorder(gateway: GatewayThread) -> RecorderProcess:
    recorder = gateway.app.writer
    assert isinstance(recorder, RecorderProcess)
    return recorder


def _health(gateway: GatewayThread) -> dict[str, Any]:
    return httpx.get(gateway.url + "/health").json()


@pytest.mark.parametrize("writer_ack", ["journal", "commit"])
def test_exchanges_are_recorded_by_the_recorder_process(make_gateway, writer_ack):
    gateway = make_gateway(writer_process=True)
    client = client_for(gateway)
    for i in range(6):
        if i % 2:
            chunks = client.chat.completions.create(model="mock-1", stream=True, messages=[
                {"role": "user", "content": "tell me about pelicans"}, {"role": "assistant", "content": "..."},
                {"role": "user", "content": f"turn {i}"}])
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).endswith(f"turn {i}")
        else:
            reply = client.chat.completions.create(model="mock-1", messages=[
                {"role": "user", "content": "tell me about pelicans"}, {"role": "assistant", "content": "..."},
                {"role": "user", "content": f"turn {i}"}])
            assert reply.choices[0].message.content.endswith(f"turn {i}")
        # Read-your-writes: the query API waits for the recorder process to have committed the answer.
        listed = httpx.get(gateway.url + "/v1/requests", params={"limit": 100}).json()["data"]
        assert len(listed) == i + 1
    assert gateway.count("responses") == 6
    sessions = gateway.rows("SELECT message_count FROM sessions")
    assert [row["message_count"] for row in sessions] == [6]  # one conversation, as in-process
    # The recorder process's figures reach /health; its search indexer catches up.
    health = _health(gateway)
    assert health["status"] == "ok"
    assert health["store"]["submitted"] == 12 and health["store"]["lag"] == 0
    _wait_for(lambda: httpx.get(gateway.url + "/v1/search", params={"q": "turn"}).json()["data"] != [])
    assert os.getpid() != _recorder(gateway).pid


def test_a_journal_that_breaks_hands_the_records_to_a_writer_thread(make_gateway):
    """A full or failing disk refuses the journal's writes: the process writes what the journal holds
    and exits, and a writer thread of the gateway records the rest; nothing is lost or doubled."""
    gateway = make_gateway(writer_process=True)
    recorder = _recorder(gateway)
    process = recorder.pid
    client = client_for(gateway)
    asked: list[str] = []

    def ask(content: str, stream: bool = False) -> None:
        messages = [{"role": "user", "content": content}]
        if stream:
            chunks = client.chat.completions.create(model="mock-1", messages=messages, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        else:
            text = client.chat.completions.create(model="mock-1", messages=messages).choices[0].message.content
        assert text.endswith(content)
        asked.append(content)

    for n in range(10):
        ask(f"before the break {n}")
    journal = recorder.journal
    refusing = os.open(os.devnull, os.O_RDONLY)  # as test_journal.py breaks one: every write() fails
    os.close(journal._fd)
    journal._fd = refusing
    for n in range(10):
        ask(f"after the break {n}", stream=n % 3 == 0)

    gateway.settle()
    assert journal.broken is not None
    assert recorder.pid == process and recorder._process.poll() == 0  # it drained and exited, not killed
    rows = gateway.rows("SELECT q.request_id, q.openai_request, COUNT(r.id) AS answers FROM requests q "
                        "LEFT JOIN responses r ON r.request_id = q.id GROUP BY q.id")
    assert len(rows) == len(asked) == 20
    assert all(row["answers"] == 1 for row in rows)
    assert sorted(content for row in rows for content in asked if content in row["openai_request"]) == sorted(asked)
    health = _health(gateway)
    assert health["status"] == "ok"
    assert health["store"]["dropped"] == 0 and health["store"]["committed"] == 40
    # Search goes on too: an indexer of the gateway's own took over from the process's.
    _wait_for(lambda: len(httpx.get(gateway.url + "/v1/search", params={"q": "after"}).json()["data"]) == 10)


def test_a_journal_that_breaks_while_the_process_is_down_is_drained_by_the_next_one(make_gateway):
    """The process is killed and the journal breaks before it is started again: the next process only
    writes what the journal holds (checking it against the store) and exits, then the writer thread
    takes over; every exchange is recorded once."""
    gateway = make_gateway(writer_process=True)
    recorder = _recorder(gateway)
    client = client_for(gateway)

    def ask(content: str) -> None:
        reply = client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": content}])
        assert reply.choices[0].message.content.endswith(content)

    for n in range(5):
        ask(f"before the kill {n}")
    first = recorder.pid
    os.kill(first, signal.SIGKILL)
    journal = recorder.journal
    refusing = os.open(os.devnull, os.O_RDONLY)
    os.close(journal._fd)
    journal._fd = refusing
    for n in range(5):
        ask(f"while it is down {n}")

    gateway.settle()
    assert recorder.pid != first and recorder._process.poll() == 0  # the second one drained and exited
    rows = gateway.rows("SELECT q.request_id, COUNT(r.id) AS answers FROM requests q "
                        "LEFT JOIN responses r ON r.request_id = q.id GROUP BY q.id")
    assert len(rows) == 10 and all(row["answers"] == 1 for row in rows)
    assert _health(gateway)["store"]["dropped"] == 0


def test_a_killed_recorder_process_is_restarted_and_nothing_is_lost_or_doubled(make_gateway):
    gateway = make_gateway(writer_process=True)
    recorder = _recorder(gateway)
    answered: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def load(worker: int) -> None:
        client = client_for(gateway)
        for i in range(10_000):
            if stop.is_set():
                return
            content = f"kill-recorder {worker}-{i}"
            reply = client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": content}])
            assert reply.choices[0].message.content.endswith(content)
            with lock:
                answered.append(content)
                if len(answered) >= 150:
                    enough.set()

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    behind: list[bool] = []  # at each kill: the journal held records past the last commit
    try:
        for _ in range(2):  # twice: the second one mid-way through the first one's replay, often
            _wait_for(lambda: recorder.stats.committed > 20)
            first = recorder.pid
            os.kill(first, signal.SIGSTOP)  # no commit between the look at its progress and the kill
            progress = recorder.journal.read_progress()
            behind.append(progress is None or progress < recorder.journal.end)
            os.kill(first, signal.SIGKILL)
            _wait_for(lambda: recorder.pid != first and recorder.healthy)  # noqa: B023
        assert enough.wait(30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if any(behind):  # the new process checked what the killed one may have written
        assert recorder.stats.replayed > 0
    gateway.settle()
    rows = gateway.rows("SELECT q.request_id, COUNT(*) AS n FROM requests q JOIN responses r ON r.request_id = q.id "
                        "GROUP BY q.request_id")
    assert len(rows) == len(answered) and max(row["n"] for row in rows) == 1
    assert gateway.count("requests") == len(answered)
    assert _health(gateway)["status"] == "ok"


def test_a_recorder_process_that_cannot_start_does_not_hold_up_the_gateway(tmp_path):
    """It dies before its first report (here: a store it cannot open): the gateway starts anyway,
    says so on /health's terms, keeps journaling, and keeps trying to start it."""
    settings = Settings(_env_file=None, database_path=tmp_path / "missing" / "dir" / "chatledger.db")
    slot = claim_slot(tmp_path / "journal")
    spec = recorder_spec(settings, slot.directory, tmp_path / "deadletter.jsonl", None)
    recorder = RecorderProcess(Journal(slot.directory), slot, spec, ack="journal")

    async def run() -> tuple[float, bool, str | None, int]:
        started = time.monotonic()
        await recorder.start(timeout=60)
        took = time.monotonic() - started
        record = RequestRecord("r1", 1, "POST", "/v1/chat/completions", "chat", "hi", b"{}", None, "m", "mock", "m",
                               False, None, None)
        journaled = recorder.submit(record)
        first = recorder.pid
        await asyncio.to_thread(_wait_for, lambda: recorder.pid != first)  # it is tried again
        return took, recorder.healthy, recorder.last_error, journaled

    took, healthy, last_error, journaled = asyncio.run(run())
    recorder.close(timeout=5)
    slot.release()
    assert took < 30 and not healthy and "exited" in (last_error or "")
    assert journaled == 1  # the record waits in the journal for a process that can write it
