"""The recorder's spill file: past its memory budget the writer keeps records on disk, not drops them,
and writes them in order, after the backlog, once the store takes writes again; across a restart too."""

from __future__ import annotations

import asyncio
import threading
import time

from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.spill import decode, encode
from chatledger.store.writer import TransientStoreError, Writer


class FlakySink:
    """Takes writes only while `up` is set; remembers what it took, in order."""

    def __init__(self, up: bool = True) -> None:
        self.up = threading.Event()
        if up:
            self.up.set()
        self.written: list[str] = []

    def write(self, records: list[Record]) -> None:
        if not self.up.is_set():
            raise TransientStoreError("server closed the connection unexpectedly")
        self.written.extend(r.request_id for r in records)

    def reconnect(self) -> None: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...
    def maintain(self, idle: bool) -> None: ...


def _record(index: int) -> RequestRecord:
    body = {"model": "m", "messages": [{"role": "user", "content": f"spill {index}"}]}
    return RequestRecord(f"r{index:05d}", index, "POST", "/v1/chat/completions", "chat", body,
                         b'{"model": "m"}', None, "m", "mock", "m", False, None, None)


def _wait(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_records_round_trip_through_the_spill_format():
    response = ResponseRecord("r", "x", 1, 200, 5, openai_response=b"\x00\xff{}", stream_events=[b"data: 1\n\n"],
                              ttft_ms=2, error="e", cut=True, extra={"a": 1})
    assert decode(encode(response)) == response
    assert decode(encode(_record(3))) == _record(3)


def test_past_the_budget_records_spill_and_drain_in_order(tmp_path):
    sink = FlakySink(up=False)
    spill = tmp_path / "spill.jsonl"

    async def run() -> Writer:
        writer = Writer(lambda: sink, batch_size=16, flush_ms=1, max_pending_bytes=4096, spill_path=spill,
                        retry_max_s=0.05)
        writer.start()
        for index in range(300):
            writer.submit(_record(index))
        assert writer.stats.spilled > 200 and writer.stats.dropped == 0
        assert spill.stat().st_size > 0
        sink.up.set()
        # Records submitted while the spill drains queue behind it, not before it.
        for index in range(300, 400):
            writer.submit(_record(index))
            await asyncio.sleep(0.001)
        await asyncio.to_thread(_wait, lambda: len(sink.written) == 400)
        await asyncio.to_thread(writer.close)
        return writer

    writer = asyncio.run(run())
    assert sink.written == [f"r{index:05d}" for index in range(400)]
    assert writer.stats.committed == 400 and writer.healthy
    assert spill.stat().st_size == 0 and not (tmp_path / "spill.jsonl.offset").exists()


def test_a_stop_with_the_store_down_keeps_everything_for_the_next_start(tmp_path):
    spill = tmp_path / "spill.jsonl"
    down = FlakySink(up=False)

    async def first_run() -> None:
        writer = Writer(lambda: down, batch_size=16, flush_ms=1, max_pending_bytes=8192, spill_path=spill,
                        retry_max_s=0.05)
        writer.start()
        for index in range(200):
            writer.submit(_record(index))
        await asyncio.to_thread(writer.close, 0.5)  # the drain cannot finish: a forced stop

    asyncio.run(first_run())
    assert down.written == []
    up = FlakySink()

    async def second_run() -> None:
        writer = Writer(lambda: up, batch_size=16, flush_ms=1, spill_path=spill)
        writer.start()
        writer.submit(_record(200))  # newer than the spill's: written after them
        await asyncio.to_thread(writer.close)

    asyncio.run(second_run())
    assert up.written == [f"r{index:05d}" for index in range(201)]
    assert spill.stat().st_size == 0


def test_a_partly_committed_spill_resumes_where_it_stopped(tmp_path):
    spill = tmp_path / "spill.jsonl"
    sink = FlakySink()
    calls = 0

    def write(records: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise TransientStoreError("gone")
        sink.written.extend(r.request_id for r in records)

    sink.write = write  # type: ignore[method-assign]
    with spill.open("wb") as handle:
        for index in range(100):
            handle.write(encode(_record(index)))

    async def run(target: FlakySink, timeout: float) -> None:
        writer = Writer(lambda: target, batch_size=10, flush_ms=1, spill_path=spill, retry_max_s=0.05)
        writer.start()
        await asyncio.to_thread(writer.close, timeout)

    asyncio.run(run(sink, 0.5))
    assert sink.written == [f"r{index:05d}" for index in range(20)]
    again = FlakySink()
    asyncio.run(run(again, 30))
    assert again.written == [f"r{index:05d}" for index in range(20, 100)]
