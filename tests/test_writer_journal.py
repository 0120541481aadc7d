"""The recorder and its journal: past the memory budget records wait in the journal, not dropped, and
are written in order, after the older ones, once the store takes writes again; across a restart too,
and a crash between a commit and the journal's note of it writes nothing twice."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

from chatledger.store import Store
from chatledger.store.journal import Journal
from chatledger.store.records import Record, RequestRecord, ResponseRecord
from chatledger.store.writer import TransientStoreError, Writer


class FlakySink:
    """Takes writes only while `up` is set; remembers what it took, in order."""

    def __init__(self, up: bool = True) -> None:
        self.up = threading.Event()
        if up:
            self.up.set()
        self.written: list[str] = []
        self.batches: list[int] = []  # the size of each batch taken

    def write(self, records: list[Record]) -> None:
        if not self.up.is_set():
            raise TransientStoreError("server closed the connection unexpectedly")
        self.written.extend(r.request_id for r in records)
        self.batches.append(len(records))

    def reconnect(self) -> None: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...
    def maintain(self, idle: bool) -> None: ...


def _record(index: int, body: bytes = b'{"model": "m"}') -> RequestRecord:
    return RequestRecord(f"r{index:05d}", index, "POST", "/v1/chat/completions", "chat", f"journal {index}",
                         body, None, "m", "mock", "m", False, None, None)


def _wait(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_past_the_budget_records_wait_in_the_journal_and_drain_in_order(tmp_path):
    sink = FlakySink(up=False)

    async def run() -> Writer:
        writer = Writer(lambda: sink, batch_size=16, flush_ms=1, max_pending_bytes=4096,
                        journal=Journal(tmp_path / "journal"), retry_max_s=0.05)
        writer.start()
        for index in range(300):
            writer.submit(_record(index))
        assert writer.stats.spilled > 200 and writer.stats.dropped == 0
        sink.up.set()
        # Records submitted while the journal drains queue behind it, not before it.
        for index in range(300, 400):
            writer.submit(_record(index))
            await asyncio.sleep(0.001)
        await asyncio.to_thread(_wait, lambda: len(sink.written) == 400)
        await asyncio.to_thread(writer.close)
        return writer

    writer = asyncio.run(run())
    assert sink.written == [f"r{index:05d}" for index in range(400)]
    assert writer.stats.committed == 400 and writer.healthy
    assert list((tmp_path / "journal").glob("*.log")) == []  # all committed: nothing left to replay


def test_a_backlog_is_written_in_batches_cut_by_bytes_from_memory_and_from_the_journal(tmp_path):
    """A store that comes back to a backlog gets it in batches of at most `batch_bytes` (and the one
    record that crosses it), whether the records waited in memory or in the journal."""
    sink = FlakySink(up=False)
    body = b'{"model": "m", "pad": "' + b"x" * 1000 + b'"}'  # a record of ~1.5 KB, as the writer counts

    async def run() -> None:
        writer = Writer(lambda: sink, batch_size=1000, batch_bytes=8 * 1024, flush_ms=1,
                        max_pending_bytes=64 * 1024, journal=Journal(tmp_path / "journal"), retry_max_s=0.05)
        writer.start()
        for index in range(200):
            writer.submit(_record(index, body))
        assert 100 < writer.stats.spilled < 200  # some wait in memory, the rest in the journal
        sink.up.set()
        await asyncio.to_thread(_wait, lambda: len(sink.written) == 200)
        await asyncio.to_thread(writer.close)

    asyncio.run(run())
    assert sink.written == [f"r{index:05d}" for index in range(200)]
    # 8 KB is 6 records as the writer counts them (body + 512), 8 as journal frames (body + ~150).
    assert max(sink.batches) <= 8 and len(sink.batches) >= 200 // 8
    assert 6 in sink.batches and 8 in sink.batches  # both kinds of batch were cut


def test_without_a_journal_records_past_the_budget_are_dropped_and_counted(tmp_path):
    sink = FlakySink(up=False)

    async def run() -> Writer:
        writer = Writer(lambda: sink, batch_size=16, flush_ms=1, max_pending_bytes=4096, retry_max_s=0.05)
        writer.start()
        for index in range(100):
            writer.submit(_record(index))
        sink.up.set()
        await asyncio.to_thread(writer.close)
        return writer

    writer = asyncio.run(run())
    assert writer.stats.dropped > 50 and len(sink.written) == 100 - writer.stats.dropped


def test_a_stop_with_the_store_down_keeps_everything_for_the_next_start(tmp_path):
    down = FlakySink(up=False)

    async def first_run() -> None:
        writer = Writer(lambda: down, batch_size=16, flush_ms=1, max_pending_bytes=8192,
                        journal=Journal(tmp_path), retry_max_s=0.05)
        writer.start()
        for index in range(200):
            writer.submit(_record(index))
        await asyncio.to_thread(writer.close, 0.5)  # the drain cannot finish: a forced stop

    asyncio.run(first_run())
    assert down.written == []
    up = FlakySink()

    async def second_run() -> Writer:
        writer = Writer(lambda: up, batch_size=16, flush_ms=1, journal=Journal(tmp_path))
        writer.start()
        writer.submit(_record(200))  # newer than the journal's: written after them
        await asyncio.to_thread(writer.close)
        return writer

    writer = asyncio.run(second_run())
    assert up.written == [f"r{index:05d}" for index in range(201)]
    assert writer.stats.replayed == 200


def test_a_partly_committed_journal_resumes_where_it_stopped(tmp_path):
    sink = FlakySink()
    calls = 0

    def write(records: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise TransientStoreError("gone")
        sink.written.extend(r.request_id for r in records)

    sink.write = write  # type: ignore[method-assign]
    seed = Journal(tmp_path)
    for index in range(100):
        seed.append(_record(index))
    seed.close()

    async def run(target: FlakySink, timeout: float) -> None:
        writer = Writer(lambda: target, batch_size=10, flush_ms=1, journal=Journal(tmp_path), retry_max_s=0.05)
        writer.start()
        await asyncio.to_thread(writer.close, timeout)

    asyncio.run(run(sink, 0.5))
    assert sink.written == [f"r{index:05d}" for index in range(20)]
    again = FlakySink()
    asyncio.run(run(again, 30))
    assert again.written == [f"r{index:05d}" for index in range(20, 100)]


class HeldSink(FlakySink):
    """A store whose commits take until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, records: list[Record]) -> None:
        self.release.wait(30)
        super().write(records)


def test_ack_journal_answers_before_the_commit_and_ack_commit_after_it(tmp_path):
    held = HeldSink()

    async def run() -> tuple[bool, list[str], bool, bool, list[str]]:
        journaled = Writer(lambda: held, flush_ms=1, journal=Journal(tmp_path / "a"), ack="journal")
        committed = Writer(lambda: held, flush_ms=1, journal=Journal(tmp_path / "b"), ack="commit")
        journaled.start()
        committed.start()
        fast = await asyncio.wait_for(journaled.submit_and_wait(_record(1), timeout=30), 10)
        written_then = list(held.written)
        waiting = asyncio.ensure_future(committed.submit_and_wait(_record(2), timeout=30))
        await asyncio.sleep(0.05)
        still_waiting = not waiting.done()
        held.release.set()
        slow = await asyncio.wait_for(waiting, 10)
        await asyncio.to_thread(journaled.close)
        await asyncio.to_thread(committed.close)
        return fast, written_then, still_waiting, slow, sorted(held.written)

    fast, written_then, still_waiting, slow, written = asyncio.run(run())
    assert fast and written_then == []  # durable in the journal, answered before any commit
    assert still_waiting and slow  # ack=commit: answered once the commit came
    assert written == ["r00001", "r00002"]


def _exchange(index: int) -> tuple[RequestRecord, ResponseRecord]:
    raw = f'{{"model": "m", "messages": [{{"role": "user", "content": "crash {index}"}}]}}'.encode()
    request = RequestRecord(f"q{index:05d}", 1_700_000_000_000 + index, "POST", "/v1/chat/completions", "chat",
                            f"crash {index}", raw, None, "m", "mock", "m", False, None, None)
    answer = b'{"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], ' \
             b'"usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}'
    return request, ResponseRecord(request.request_id, f"a{index:05d}", request.timestamp + 5, 200, 5,
                                   openai_response=answer)


def test_a_crash_between_a_commit_and_its_note_in_the_journal_writes_nothing_twice(tmp_path):
    database = tmp_path / "ledger.db"
    store = Store.open(database_path=database, session_timeout_ms=60_000)
    journal_dir = tmp_path / "journal"

    async def run(count: int) -> Writer:
        writer = Writer(store.sink, batch_size=8, flush_ms=1, journal=Journal(journal_dir))
        writer.start()
        for index in range(count):
            for record in _exchange(index):
                writer.submit(record)
        await asyncio.to_thread(writer.close)
        return writer

    asyncio.run(run(20))
    # As if the process died after its last commits but before the journal noted them: the journal
    # still holds every record (the segment is put back) and its progress says nothing was committed.
    replay = Journal(tmp_path / "scratch")
    for index in range(20):
        for record in _exchange(index):
            replay.append(record)
    replay.close()
    (tmp_path / "scratch" / "00000001.log").rename(journal_dir / "00000001.log")
    (journal_dir / "progress").unlink()

    writer = asyncio.run(run(0))
    assert writer.stats.replayed == 40
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 20
        assert connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 20
        assert connection.execute("SELECT SUM(requests) FROM usage_hourly").fetchone()[0] == 20
        assert connection.execute("SELECT SUM(message_count) FROM sessions").fetchone()[0] == 20
    assert writer.stats.dead_lettered == 0
    store.close()


def test_journals_left_by_gone_worker_processes_are_written_first(tmp_path):
    """A run with two worker processes left slot-1's journal uncommitted; the next run has one worker,
    which takes slot-0 and, before it serves, writes what slot-1 holds."""
    from chatledger.store.journal import claim_slot
    from chatledger.store.writer import replay_orphaned_journals

    database = tmp_path / "ledger.db"
    store = Store.open(database_path=database, session_timeout_ms=60_000)
    root = tmp_path / "journal"
    own, gone = claim_slot(root), claim_slot(root)
    left = Journal(gone.directory)
    for index in range(5):
        for record in _exchange(index):
            left.append(record)
    left.close()
    gone.release()  # its process ended

    async def run() -> int:
        return await replay_orphaned_journals(root, own, store.sink)

    assert asyncio.run(run()) == 10
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 5
    assert list(gone.directory.glob("*.log")) == []
    assert asyncio.run(run()) == 0  # nothing left the second time
    own.release()
    store.close()


def test_answers_wait_for_their_commit_once_the_recorder_falls_behind(tmp_path):
    """Backpressure: ack=journal answers at once only while the thread keeps up; past max_lag
    uncommitted records, an answer waits for its commit, so a sustained load cannot grow memory."""
    held = HeldSink()

    async def run() -> tuple[list[bool], bool, bool]:
        writer = Writer(lambda: held, flush_ms=1, journal=Journal(tmp_path), ack="journal", max_lag=2)
        writer.start()
        early = [await asyncio.wait_for(writer.submit_and_wait(_record(index), timeout=30), 10)
                 for index in range(2)]
        third = asyncio.ensure_future(writer.submit_and_wait(_record(2), timeout=30))
        await asyncio.sleep(0.05)
        held_back = not third.done()
        held.release.set()
        answered = await asyncio.wait_for(third, 10)
        await asyncio.to_thread(writer.close)
        return early, held_back, answered

    early, held_back, answered = asyncio.run(run())
    assert early == [True, True] and held_back and answered
    assert sorted(held.written) == ["r00000", "r00001", "r00002"]


def test_a_follower_reads_what_another_journal_appends_across_segments_and_rechecks_before_a_position(tmp_path):
    """The recorder process's reading: it follows the gateway's appends (`follow_to`) into new segments,
    marks as replayed the records before `follow` (a dead process may have written them), notes its
    progress, and deletes the segments it has passed."""
    appender = Journal(tmp_path / "journal", segment_bytes=2048)
    spans = [appender.append(_record(index)) for index in range(100)]
    assert all(spans) and appender.end[0] >= 4  # several segments
    sink = FlakySink()
    restart_at = spans[39][1]  # as if a first follower had read the first 40 and died

    async def run() -> Writer:
        writer = Writer(lambda: sink, batch_size=16, journal=Journal(tmp_path / "journal", follow=restart_at),
                        follow=True)
        writer.start()
        writer.follow_to(spans[69][1])
        await asyncio.to_thread(_wait, lambda: len(sink.written) == 70)
        for index in range(100, 130):  # the gateway goes on appending, into further segments
            appender.append(_record(index))
        writer.follow_to(appender.end)
        await asyncio.to_thread(writer.close)
        return writer

    writer = asyncio.run(run())
    assert sink.written == [f"r{index:05d}" for index in range(130)]
    assert writer.stats.replayed == 40
    follower = Journal(tmp_path / "journal", follow=appender.end)
    assert follower.read_progress() == appender.end
    assert follower.last_segment() == appender.end[0]  # the segments it passed are gone
    assert len(list((tmp_path / "journal").glob("*.log"))) == 1


def test_a_follower_batches_notes_nobody_waits_for_and_reads_at_once_for_one_that_is_waited_on(tmp_path):
    """The recorder process commits records announced lazily with its flush_ms batch, and what
    someone waits for (an urgent note) without waiting for that batch."""
    appender = Journal(tmp_path / "journal")
    sink = FlakySink()

    async def run() -> None:
        # flush_ms of an hour: only an urgent note, or the timer of a short one, can get a record in.
        writer = Writer(lambda: sink, journal=Journal(tmp_path / "journal", follow=(0, 0)), follow=True,
                        flush_ms=3_600_000)
        writer.start()
        for index in range(3):
            appender.append(_record(index))
            writer.follow_to(appender.end, urgent=False)
        appender.append(_record(3))
        writer.follow_to(appender.end)  # someone waits: everything so far goes in now
        await asyncio.to_thread(_wait, lambda: len(sink.written) == 4)
        await asyncio.to_thread(writer.close)
        quick = Writer(lambda: sink, journal=Journal(tmp_path / "journal", follow=(0, 0)), follow=True, flush_ms=20)
        quick.start()
        appender.append(_record(4))
        quick.follow_to(appender.end, urgent=False)
        await asyncio.to_thread(_wait, lambda: len(sink.written) == 5)  # the flush_ms timer, no other note
        await asyncio.to_thread(quick.close)

    asyncio.run(run())
    assert sink.written == [f"r{index:05d}" for index in range(5)]
