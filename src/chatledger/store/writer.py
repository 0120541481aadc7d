"""The recorder: one thread owns the write connection and commits records in batches.

On the event loop a record costs a journal append (journal.py: one `write()`) and a deque append;
no lock is contended and nothing is serialized for the database. The thread is woken at the end of
a loop iteration that produced an answer someone waits for (`ack`, below), `flush_ms` after the first
other record (a request on its way upstream, an answer already sent), or when `batch_size` records
wait. It takes everything that has arrived (up to `batch_size` records per transaction), hands it
to the sink as one transaction, notes in the journal how far the commits got, then wakes whoever
waits on the batch with a single `call_soon_threadsafe`. Under load many exchanges share each
commit (group commit).

When an answer is durable (`ack`): `journal` - once its records are in the journal, so a response
does not wait for the database (a crash loses nothing: the next start replays the journal from the
last commit, skipping what was committed), as long as the thread keeps up (past `max_lag` records
behind, answers wait for their commits: backpressure, not a growing backlog); `commit` - once its
batch is committed (bounded by a timeout, so a broken store never holds a client). Without a
journal, `commit` is the only choice.

When the sink fails for a reason that may pass (locked, disk full, server gone) the batch is kept
and retried with backoff, the cause logged once; records that fail on their own (a bug, a
constraint) are written one by one and the bad ones set aside in a dead-letter file. Past
`max_pending_bytes` in memory, new records are kept in the journal only, and the thread reads
them back from it, in order and after the older ones in memory, once the store keeps up.

In the recorder process (`follow=True`, recorder_process.py) nothing comes through memory: the thread
reads every record from a journal the gateway's process appends to, as far as `follow_to` says it goes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import orjson

from chatledger.store.journal import Journal, JournalEntry, Position, Slot, orphaned_slots
from chatledger.store.records import Record, ResponseRecord
from chatledger.store.threads import lower_this_threads_priority
from chatledger.store.waiters import CommitWaiters

log = logging.getLogger("chatledger.writer")

Ack = Literal["journal", "commit"]
# Backlog in memory past which journal-acked answers wait for their commit.
LAG_RECORDS = 1024
LAG_BYTES = 16 * 1024 * 1024
# (sequence number, record, to be committed soon (an answer), where it sits in the journal, its size)
Item = tuple[int, Record, bool, tuple[Position, Position] | None, int]


class TransientStoreError(Exception):
    """The store cannot take writes right now; the same batch may succeed later."""


class Sink(Protocol):
    def write(self, records: list[Record]) -> None: ...  # one transaction, or raise
    def reconnect(self) -> None: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...  # close for good
    # Housekeeping between batches (the WAL). Returns in how many seconds it wants another call
    # should no batch come before (None: nothing pending).
    def maintain(self, idle: bool) -> float | None: ...


@dataclass(slots=True)
class WriterStats:
    submitted: int = 0
    committed: int = 0
    batches: int = 0
    failures: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    spilled: int = 0  # kept in the journal only, past the memory budget
    replayed: int = 0  # read back from an earlier run's journal


class Writer:
    def __init__(
        self,
        sink_factory: Callable[[], Sink],
        *,
        batch_size: int = 4096,
        batch_bytes: int = 8 * 1024 * 1024,
        flush_ms: int = 10,
        max_pending_bytes: int = 256 * 1024 * 1024,
        dead_letter_path: Path | None = None,
        retry_max_s: float = 1.0,
        journal: Journal | None = None,
        ack: Ack = "commit",
        max_lag: int | None = None,
        on_commit: Callable[[int], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        niceness: int = 0,
        follow: bool = False,
    ) -> None:
        if ack == "journal" and journal is None:
            raise ValueError("ack='journal' needs a journal")
        self._sink_factory = sink_factory
        self._batch_size = batch_size
        # A backlog is caught up in batches this big at most: big enough that each session's row and
        # each rollup row is written once for many exchanges, small enough to keep memory flat.
        self._batch_bytes = batch_bytes
        self._flush_s = flush_ms / 1000
        self._max_pending_bytes = max_pending_bytes
        self._dead_letter_path = dead_letter_path
        self._retry_max_s = retry_max_s
        self._journal = journal
        self._ack = ack
        # ack='journal' answers without waiting only while the thread keeps up: past this many records
        # (or LAG_BYTES of them) not yet committed, answers wait for their commit too, so a sustained
        # load finds its pace instead of growing a backlog (and memory) without end.
        self._max_lag = max_lag if max_lag is not None else LAG_RECORDS
        # Called from the writer thread after each commit with the number of responses it held.
        self._on_commit = on_commit
        self._niceness = niceness
        # Called from the writer thread after each commit and each failed write (the recorder process
        # reports its state to the gateway's).
        self._on_progress = on_progress
        # Follow a journal another process appends to (`Journal(follow=...)`), moved on by `follow_to`:
        # every record comes from the journal, none through memory.
        self._follow = follow
        if follow and journal is None:
            raise ValueError("follow=True needs a journal")
        # (follow mode) Read the journal at once (start-up, a note someone waits on), or at this time.
        self._follow_now = True
        self._follow_due: float | None = None
        self._inbox: collections.deque[Item] = collections.deque()
        self._wake = threading.Event()
        self._stop_requested = False
        self._flush_requested = False  # a flush_ms timer fired (the thread takes it on)
        self._wake_scheduled = False  # a wake is due at the end of this loop iteration
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop_thread: int | None = None
        self._seq = 0
        self._pending_bytes = 0
        # Guards the memory budget and the journal's end, which the thread reads to catch up.
        self._lock = threading.Lock()
        # Set while new records go to the journal only; the thread clears it once it has caught up.
        self._overflowing = False
        # Where the next record to commit starts in the journal (the thread's; set by `start`).
        self._position: Position | None = None
        self._waiters: CommitWaiters[int] = CommitWaiters()  # by sequence number
        self._committed_seq = 0  # the loop's view, moved by _on_committed
        self._thread_committed_seq = 0  # the thread's, set after every commit (read by the loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self.healthy = True
        self.last_error: str | None = None
        self.stats = WriterStats()

    @property
    def journal(self) -> Journal | None:
        return self._journal

    # -- event loop side -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        sink = self._sink_factory()  # open in the caller so a bad path fails start-up loudly
        journal = self._journal
        if journal is not None and self._follow:
            self._position = journal.committed_through
            self._overflowing = True
        elif journal is not None:
            if journal.has_backlog:
                # An earlier run's records come first: until they are in, new ones queue behind them.
                self._position = journal.committed_through
                self._overflowing = True
                log.warning("journal %s holds records an earlier run did not commit: writing them first",
                            journal.directory)
            else:
                self._position = journal.end
                journal.committed(journal.end)
        self._thread = threading.Thread(target=self._run, args=(sink,), name="chatledger-writer", daemon=True)
        self._thread.start()
        if self._overflowing:
            self._wake.set()

    def follow_to(self, end: Position, *, urgent: bool = True) -> None:
        """(follow mode; any thread) The appending process has written records up to `end`. Not
        `urgent` (nobody waits for them): they are read with the next `flush_ms` batch, as the
        in-process recorder commits such records."""
        journal = self._journal
        assert self._follow and journal is not None
        with self._lock:
            if end > journal.end:
                journal.end = end
            wake = urgent or self._follow_due is None  # else the thread is already waiting for that time
            if urgent:
                self._follow_now = True
            elif self._follow_due is None:
                self._follow_due = time.monotonic() + self._flush_s
        if wake:
            self._wake.set()

    def _follow_wait(self) -> float:
        """(follow mode) Seconds until the journal is to be read again; 0: now."""
        with self._lock:
            if self._follow_now or self._stop_requested or self._follow_due is None:
                self._follow_now, self._follow_due = False, None
                return 0.0
            left = self._follow_due - time.monotonic()
            if left <= 0:
                self._follow_due = None
                return 0.0
            return left

    def submit(self, record: Record, *, urgent: bool = False) -> int:
        """Queue a record; returns its sequence number (0 if it is kept in the journal only, or dropped).
        `urgent`: commit it as soon as the thread can (an answer), not within `flush_ms`."""
        return self._submit(record, urgent)[0]

    def _submit(self, record: Record, urgent: bool) -> tuple[int, bool]:
        """(sequence number or 0, whether the journal has it)."""
        size = record.size()
        journal = self._journal
        with self._lock:
            span = journal.append(record) if journal is not None else None
            if self._overflowing or self._pending_bytes + size > self._max_pending_bytes:
                return self._over_budget(span), span is not None
            self._pending_bytes += size
        self.stats.submitted += 1
        self._seq += 1
        self._inbox.append((self._seq, record, urgent, span, size))
        if urgent or len(self._inbox) >= self._batch_size:
            self._wake_soon()
        elif self._flush_timer is None:
            self._flush_later()
        return self._seq, span is not None

    def _over_budget(self, span: tuple[Position, Position] | None) -> int:
        """Memory is full (called under the lock): the record stays in the journal only, or is lost."""
        if span is None:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error("recorder backlog is over %d bytes and there is no journal to hold more: "
                          "%d records dropped so far", self._max_pending_bytes, self.stats.dropped)
            return 0
        if not self._overflowing:
            log.warning("recorder backlog is over %d bytes: new records wait in the journal %s",
                        self._max_pending_bytes, self._journal.directory if self._journal else "")
            self._overflowing = True
        self.stats.submitted += 1
        self.stats.spilled += 1
        self._wake.set()  # the thread reads them back from the journal when it gets to them
        return 0

    def _on_loop(self) -> bool:
        return self._loop is not None and threading.get_ident() == self._loop_thread

    def _wake_soon(self) -> None:
        """Wake the thread once the loop is done with this iteration, so that everything submitted
        meanwhile goes into the same batch (one thread switch per iteration, not per record)."""
        if not self._on_loop():
            self._wake.set()
        elif not self._wake_scheduled:
            self._wake_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._wake_now)

    def _wake_now(self) -> None:
        self._wake_scheduled = False
        self._wake.set()

    def _flush_later(self) -> None:
        if not self._on_loop():
            self._flush_requested = True
            self._wake.set()
            return
        assert self._loop is not None
        self._flush_timer = self._loop.call_later(self._flush_s, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._flush_requested = True
        self._wake.set()

    async def submit_and_wait(self, record: Record, timeout: float) -> bool:
        """Queue an answer and return once it is durable: in the journal
        (ack='journal'), or committed (ack='commit', or a journal that cannot be written; then at most
        `timeout` seconds, or not at all while the store is failing). True when the record is
        durable: committed, or journaled."""
        journal = self._journal
        wait = self._ack == "commit" or journal is None or journal.broken is not None
        # An answer that went out on the journal's word goes with the next timed batch, at most
        # `flush_ms` later. Committed at once, every answer made a small transaction of its own under
        # a moderate load: at 3,000 req/s on one core that doubled the recorder thread's CPU per
        # exchange (82 against 41 us). Queries settle first (`settled`), so they see it anyway.
        seq, journaled = self._submit(record, wait)
        if not wait and journaled and self.lag <= self._max_lag and self._pending_bytes <= LAG_BYTES:
            return True
        if not wait:
            self._flush_now()  # the thread is behind: this answer waits for its commit after all
        return await self._wait_for(seq, timeout) or journaled

    @property
    def lag(self) -> int:
        """Records submitted to memory and not committed yet."""
        return self._seq - self._thread_committed_seq

    async def settled(self, timeout: float) -> bool:
        """Wait until everything submitted so far is committed (at most `timeout` seconds, and not at
        all while the store is failing): what the query API does before it reads, so an exchange
        answered before a query is in its results. True when it is."""
        seq = self._seq
        if seq <= self._thread_committed_seq:
            return True
        self._flush_now()
        return await self._wait_for(seq, timeout)

    def _flush_now(self) -> None:
        """Someone waits: the records nobody waited for go now, not in flush_ms."""
        self._flush_requested = True
        self._wake.set()

    def settle(self, timeout: float = 10.0) -> bool:
        """`settled`, for a thread other than the event loop's (tests, tools); blocks."""
        if self._loop is None:
            return True
        return asyncio.run_coroutine_threadsafe(self.settled(timeout), self._loop).result(timeout + 1)

    async def _wait_for(self, seq: int, timeout: float) -> bool:
        loop = self._loop
        if not seq or not self.healthy or loop is None:
            return False
        future = self._waiters.add(loop, seq, timeout)
        # The thread sets its count before it looks for waiters; we look at it after joining them:
        # one of the two sees the other, so no commit goes unnoticed.
        if seq <= self._thread_committed_seq:
            self._on_committed(self._thread_committed_seq)
        return await future

    def _on_committed(self, seq: int) -> None:
        self._committed_seq = max(self._committed_seq, seq)
        self._waiters.release_through(self._committed_seq)

    def close(self, timeout: float = 30.0) -> None:
        """Drain: everything queued is committed before this returns (or the timeout passes; what is
        left then waits in the journal for the next start)."""
        if self._thread is None:
            return
        self._stop_requested = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recorder did not drain within %.0fs; %d records unwritten%s",
                      timeout, self.stats.submitted - self.stats.committed - self.stats.dead_lettered,
                      f" (kept in the journal {self._journal.directory})" if self._journal else "")
            self._stop_event.set()
            self._thread.join(5)
        self._thread = None
        if self._journal is not None:
            self._journal.close()

    # -- writer thread -----------------------------------------------------------------------------

    def _run(self, sink: Sink) -> None:
        lower_this_threads_priority(self._niceness)
        pending: collections.deque[Item] = collections.deque()
        urgent = 0  # records in `pending` to be committed at once (answers)
        flushing = False  # a flush_ms timer fired: write everything pending, awaited or not
        backlog: list[JournalEntry] = []  # read back from the journal, not committed yet
        backlog_next: Position | None = None
        backoff = 0.05
        housekeeping_in: float | None = None  # when the sink wants to be called back, though quiet
        while True:
            # Cleared before looking, so a wake that comes while we look is not lost.
            self._wake.clear()
            if self._flush_requested:
                self._flush_requested = False
                flushing = True
            urgent += self._drain(pending)
            if not backlog and not pending and self._overflowing:
                wait = self._follow_wait() if self._follow else 0.0
                if wait:  # records nobody waits for: the batch of flush_ms from the first of them
                    self._wake.wait(wait)
                    continue
                backlog, backlog_next = self._read_journal()
                if not backlog and self._follow:
                    if self._stop_requested:
                        break
                    housekeeping_in = self._sleep(sink, housekeeping_in)  # until follow_to
                    continue
                if not backlog:
                    continue  # caught up with the journal (or it moved on): look again
            if backlog:
                records = [entry.record for entry in backlog]
            elif not pending:
                if self._stop_requested:
                    break
                housekeeping_in = self._sleep(sink, housekeeping_in)
                continue
            elif not (urgent or flushing or self._stop_requested or len(pending) >= self._batch_size
                      or not self.healthy):
                # Only records nobody waits for: their flush_ms timer, an answer or more records wake us.
                housekeeping_in = self._sleep(sink, housekeeping_in)
                continue
            else:
                batch = self._next_batch(pending)
                records = [item[1] for item in batch]
            try:
                self._write(sink, records)
            except TransientStoreError as exc:
                self._note_failure(exc)
                if self._stop_event.wait(backoff):
                    break
                backoff = min(backoff * 2, self._retry_max_s)
                sink = self._reopen(sink)
                continue
            backoff = 0.05
            if backlog:
                self._note_success(records, [], backlog_next)
                backlog, backlog_next = [], None
            else:
                for _ in batch:
                    pending.popleft()
                urgent -= sum(item[2] for item in batch)
                self._note_success(records, batch, batch[-1][3][1] if batch[-1][3] else None)
                if not pending:
                    flushing = False
            # After the waiters of this batch were released; `idle` when nothing else is queued.
            housekeeping_in = self._maintain(sink, idle=not pending and not self._inbox)
        sink.shutdown()

    def _next_batch(self, pending: collections.deque[Item]) -> list[Item]:
        """The oldest records, up to `batch_size` of them and `batch_bytes` (at least one)."""
        batch: list[Item] = []
        room = self._batch_bytes
        for item in pending:
            batch.append(item)
            room -= item[4]
            if len(batch) >= self._batch_size or room <= 0:
                break
        return batch

    def _drain(self, pending: collections.deque[Item]) -> int:
        """Move what the event loop submitted into `pending`; returns how many of those are urgent."""
        inbox = self._inbox
        urgent = 0
        while inbox:
            item = inbox.popleft()
            urgent += item[2]
            pending.append(item)
        return urgent

    def _read_journal(self) -> tuple[list[JournalEntry], Position | None]:
        """The next records kept in the journal only; none once caught up (then memory takes over)."""
        journal = self._journal
        assert journal is not None and self._position is not None
        with self._lock:
            stop = journal.end
        entries, reached = journal.read(self._position, stop, self._batch_size, self._batch_bytes)
        if entries:
            for entry in entries:
                if entry.start < journal.replay_before:
                    entry.record.replayed = True
            self.stats.replayed += sum(entry.start < journal.replay_before for entry in entries)
            return entries, entries[-1].end
        if self._follow:
            if reached != self._position:  # past a torn end, or into the next segment
                self._position = reached
                journal.committed(reached)
            return [], None
        self._position = reached
        with self._lock:
            if reached >= journal.end:
                self._overflowing = False  # from here on records are kept in memory again
                log.warning("recorder caught up with its journal; records are kept in memory again")
        journal.committed(reached)
        return [], None

    def _sleep(self, sink: Sink, housekeeping_in: float | None) -> float | None:
        """Wait to be woken; when the sink's housekeeping falls due first, do it."""
        if self._wake.wait(housekeeping_in):
            return housekeeping_in
        return self._maintain(sink, idle=True)

    @staticmethod
    def _maintain(sink: Sink, *, idle: bool) -> float | None:
        try:
            return sink.maintain(idle=idle)
        except TransientStoreError as exc:
            log.warning("store housekeeping failed: %s", exc)
            return 1.0

    def _write(self, sink: Sink, records: list[Record]) -> None:
        try:
            sink.write(records)
        except TransientStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - a record the sink cannot take must not stop the rest
            if len(records) == 1:
                self._dead_letter(records[0], exc)
                return
            log.warning("batch of %d failed (%s); writing records one by one", len(records), exc)
            for record in records:
                self._write(sink, [record])

    def _reopen(self, sink: Sink) -> Sink:
        try:
            sink.reconnect()
        except Exception as exc:  # noqa: BLE001 - the next write attempt reports the cause
            log.debug("reconnect failed: %s", exc)
        return sink

    def _note_failure(self, exc: Exception) -> None:
        self.stats.failures += 1
        message = str(exc.__cause__ or exc)
        if self.healthy or message != self.last_error:
            log.error("store write failed, keeping records and retrying: %s", message)
        if self.healthy and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._waiters.release_all)
        self.last_error = message  # first: whoever sees `healthy` False (another thread) sees why
        self.healthy = False
        if self._on_progress is not None:
            self._on_progress()

    def _note_success(self, records: list[Record], batch: list[Item], through: Position | None) -> None:
        """`batch`: the memory items committed (none for records read back from the journal);
        `through`: the journal position just past them."""
        if not self.healthy:
            log.warning("store writable again; writing the backlog")
            self.healthy = True
            self.last_error = None
        self.stats.committed += len(records)
        self.stats.batches += 1
        if through is not None and self._journal is not None:
            self._position = through
            self._journal.committed(through)
        if self._on_commit is not None:
            self._on_commit(sum(isinstance(record, ResponseRecord) for record in records))
        if self._on_progress is not None:
            self._on_progress()
        if not batch:
            return
        size = sum(item[4] for item in batch)
        with self._lock:
            self._pending_bytes -= size
        self._thread_committed_seq = batch[-1][0]
        if self._loop is not None and (self._waiters or any(item[2] for item in batch)):
            # A closed loop (RuntimeError) means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_committed, batch[-1][0])

    def _dead_letter(self, record: Record, exc: Exception) -> None:
        self.stats.dead_lettered += 1
        log.error("record %s could not be written and was set aside: %r", record.request_id, exc)
        if self._dead_letter_path is None:
            return
        entry = {"kind": "response" if isinstance(record, ResponseRecord) else "request",
                 "error": repr(exc), "record": _record_dict(record)}
        try:
            with self._dead_letter_path.open("ab") as handle:
                handle.write(orjson.dumps(entry, default=_bytes_as_text) + b"\n")
        except OSError as write_error:
            log.error("dead-letter file %s not writable: %s", self._dead_letter_path, write_error)


def _record_dict(record: Record) -> dict:
    return {name: getattr(record, name) for name in record.__slots__}


def _bytes_as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError


async def replay_orphaned_journals(root: Path, own: Slot, sink_factory: Callable[[], Sink]) -> int:
    """Write what journals nobody holds still have (a run with more worker processes left them), before
    this process starts taking requests. Returns how many records were written."""
    written = 0
    for slot in orphaned_slots(root, own):
        try:
            writer = Writer(sink_factory, journal=Journal(slot.directory))
            writer.start()
            await asyncio.to_thread(writer.close, 300.0)
            written += writer.stats.committed
            log.warning("wrote %d records left in the journal %s", writer.stats.committed, slot.directory)
        finally:
            slot.release()
    return written
