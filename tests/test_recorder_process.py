"""WRITER_PROCESS=true: the recorder in a process of its own, fed by the gateway's journal (SQLite and
PostgreSQL). What the gateway-level durability tests check for it is in test_durability.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from chatledger.store.recorder_client import RecorderProcess
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
    try:
        for _ in range(2):  # twice: the second one mid-way through the first one's replay, often
            _wait_for(lambda: recorder.stats.committed > 20)
            first = recorder.pid
            os.kill(first, signal.SIGKILL)
            _wait_for(lambda: recorder.pid != first and recorder.healthy)  # noqa: B023
        assert enough.wait(30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert recorder.stats.replayed > 0  # the new process checked what the killed one may have written
    gateway.settle()
    rows = gateway.rows("SELECT q.request_id, COUNT(*) AS n FROM requests q JOIN responses r ON r.request_id = q.id "
                        "GROUP BY q.request_id")
    assert len(rows) == len(answered) and max(row["n"] for row in rows) == 1
    assert gateway.count("requests") == len(answered)
    assert _health(gateway)["status"] == "ok"
