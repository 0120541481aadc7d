"""PostgreSQL goes away mid-load and comes back: the gateway keeps answering, its recorder keeps the
rows (in memory, then in its journal only) and writes them when the database returns: 0 requests
failed, 0 rows lost, 0 duplicated. The outage is a TCP relay between the gateway and PostgreSQL
that the test cuts (open connections dropped, new ones closed at once) and restores."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest

from tests.gateway_server import DatabaseMixin, GatewayProcess

WORKERS = 6
CLEAN_EXIT = (0, -signal.SIGTERM)


class Relay:
    """127.0.0.1:<port> -> target, one pair of sockets per connection, two pumping threads per pair."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    continue
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                self._pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


class Database(DatabaseMixin):
    def __init__(self, url: str) -> None:
        self.database_url = url
        self.db_path = None  # type: ignore[assignment]


def _chat(http: httpx.Client, url: str, content: str, stream: bool) -> bool:
    body = {"model": "mock-1", "stream": stream, "messages": [{"role": "user", "content": content}]}
    try:
        response = http.post(url + "/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    if stream:
        return response.text.endswith("data: [DONE]\n\n") and content in response.text
    return response.json()["choices"][0]["message"]["content"].endswith(content)


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.fixture
def relay(postgres_url):
    parts = urlsplit(postgres_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield relay
    relay.close()


@pytest.mark.parametrize("writer_process", [False, True], ids=["recorder-thread", "recorder-process"])
def test_cutting_postgres_mid_load_loses_and_duplicates_nothing(tmp_path, postgres_url, relay, writer_process):
    # A small memory budget, so the outage's records also wait in the journal alone, read back from it
    # (the recorder process reads every record from the journal anyway).
    gateway = GatewayProcess(tmp_path, {"DATABASE_URL": _through(postgres_url, relay.port),
                                        "WRITER_MAX_PENDING_MB": "1", "LOG_LEVEL": "warning",
                                        "WRITER_PROCESS": str(writer_process).lower()}).start()
    sent: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(number: int) -> None:
        with httpx.Client(timeout=30) as http:
            index = 0
            while not stop.is_set():
                content = f"outage-{number}-{index}"
                ok = _chat(http, gateway.url, content, stream=index % 2 == 1)
                with lock:
                    (sent if ok else failed).append(content)
                index += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        relay.cut()
        time.sleep(0.5)
        degraded = httpx.get(gateway.url + "/health", timeout=10).json()
        time.sleep(3)
        during = len(sent)
        relay.restore()
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failed == []
    assert degraded["status"] == "degraded"

    database = Database(postgres_url)
    try:
        deadline = time.monotonic() + 60
        while database.count("responses") < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        health = httpx.get(gateway.url + "/health", timeout=10).json()
        assert gateway.stop() in CLEAN_EXIT
        if not writer_process:
            assert b"new records wait in the journal" in gateway.output
            assert b"caught up with its journal" in gateway.output
        assert b"store writable again" in gateway.output

        requests = Counter(orjson.loads(r["openai_request"])["messages"][0]["content"]
                           for r in database.rows("SELECT openai_request FROM requests"))
        answered = Counter(orjson.loads(r["openai_request"])["messages"][0]["content"] for r in database.rows(
            "SELECT q.openai_request FROM responses s JOIN requests q ON q.id = s.request_id WHERE s.error IS NULL"))
        assert set(requests) == set(answered) == set(sent)
        assert set(requests.values()) == set(answered.values()) == {1}
        assert database.count("responses") == len(sent) and during < len(sent)
        assert health["status"] == "ok" and health["store"]["dead_lettered"] == 0
        sums = database.rows("SELECT SUM(requests) AS n FROM usage_hourly")[0]["n"]
        assert sums == len(sent)
    finally:
        database.dispose()
