"""The recorder: one thread owns the write connection and commits records in batches.

The event loop only appends to a deque (no I/O, no serialization, no lock) and wakes the thread at
most once per loop iteration: as soon as an answer waits for its commit, or `flush_ms` after the
first record nobody waits for (a request on its way upstream), or when `batch_size` records wait.
The thread takes everything that has arrived (up to `batch_size` records per transaction), hands it
to the sink as one transaction, then wakes the awaiting responses with a single
`call_soon_threadsafe`. Under load the records of many responses share each commit (group commit).
When the sink fails for a reason that may pass (locked, disk full, server gone) the batch is kept
and retried with backoff, the cause logged once; records that fail on their own (a bug, a
constraint) are written one by one and the bad ones set aside in a dead-letter file.
When the backlog in memory passes `max_pending_bytes`, new records go to a spill file (spill.py)
instead of being dropped, and are written, in order and after the backlog, once the store keeps up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from chatledger.store.records import Record, ResponseRecord
from chatledger.store.spill import Spill
from chatledger.store.threads import lower_this_threads_priority

log = logging.getLogger("chatledger.writer")


class TransientStoreError(Exception):
    """The store cannot take writes right now; the same batch may succeed later."""


class Sink(Protocol):
    def write(self, records: list[Record]) -> None: ...  # one transaction, or raise
    def reconnect(self) -> None: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...  # close for good
    # Housekeeping between batches (search index, WAL). Returns in how many seconds it wants another
    # call should no batch come before (None: nothing pending).
    def maintain(self, idle: bool) -> float | None: ...


@dataclass(slots=True)
class WriterStats:
    submitted: int = 0
    committed: int = 0
    batches: int = 0
    failures: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    spilled: int = 0


class Writer:
    def __init__(
        self,
        sink_factory: Callable[[], Sink],
        *,
        batch_size: int = 512,
        flush_ms: int = 50,
        max_pending_bytes: int = 256 * 1024 * 1024,
        dead_letter_path: Path | None = None,
        retry_max_s: float = 1.0,
        spill_path: Path | None = None,
        on_commit: Callable[[int], None] | None = None,
        niceness: int = 0,
    ) -> None:
        self._sink_factory = sink_factory
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000
        self._max_pending_bytes = max_pending_bytes
        self._dead_letter_path = dead_letter_path
        self._retry_max_s = retry_max_s
        # Opened here, so a spill file left by an earlier run is replayed (before anything newer).
        self._spill = Spill(spill_path) if spill_path is not None else None
        # Called from the writer thread after each commit with the number of responses it held.
        self._on_commit = on_commit
        self._niceness = niceness
        self._inbox: collections.deque[tuple[int, Record, bool]] = collections.deque()
        self._wake = threading.Event()
        self._stop_requested = False
        self._flush_requested = False  # a flush_ms timer fired (the thread takes it on)
        self._wake_scheduled = False  # a wake is due at the end of this loop iteration
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop_thread: int | None = None
        self._seq = 0
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        # (seq, future, deadline) in seq order; all share one timeout, so deadlines are in order too.
        self._waiters: collections.deque[tuple[int, asyncio.Future[bool], float]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._committed_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self.healthy = True
        self.last_error: str | None = None
        self.stats = WriterStats()

    # -- event loop side -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        sink = self._sink_factory()  # open in the caller so a bad path fails start-up loudly
        self._thread = threading.Thread(target=self._run, args=(sink,), name="chatledger-writer", daemon=True)
        self._thread.start()

    def submit(self, record: Record, *, ack: bool = False) -> int:
        """Queue a record; returns its sequence number (0 if it went to the spill file or was dropped)."""
        size = record.size()
        with self._pending_lock:
            spill = self._spill
            if spill is not None and (spill.active or self._pending_bytes + size > self._max_pending_bytes):
                return self._to_spill(spill, record)
            if self._pending_bytes + size > self._max_pending_bytes:
                self.stats.dropped += 1
                if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                    log.error("recorder backlog is over %d bytes: %d records dropped so far",
                              self._max_pending_bytes, self.stats.dropped)
                return 0
            self._pending_bytes += size
        self._seq += 1
        self.stats.submitted += 1
        self._inbox.append((self._seq, record, ack))
        if ack or len(self._inbox) >= self._batch_size:
            self._wake_soon()
        elif self._flush_timer is None:
            self._flush_later()
        return self._seq

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

    def _to_spill(self, spill: Spill, record: Record) -> int:
        try:
            spill.append(record)
        except OSError as exc:
            self.stats.dropped += 1
            log.error("spill file %s not writable, record dropped: %s", spill.path, exc)
            return 0
        self.stats.submitted += 1
        self.stats.spilled += 1
        if self.stats.spilled == 1 or self.stats.spilled % 10_000 == 0:
            log.warning("recorder backlog is over %d bytes: %d records spilled to %s so far",
                        self._max_pending_bytes, self.stats.spilled, spill.path)
        self._wake.set()  # the writer thread may be waiting for memory's records
        return 0

    async def submit_and_wait(self, record: Record, timeout: float) -> bool:
        """Queue a record and wait until the batch holding it is committed (False on timeout)."""
        seq = self.submit(record, ack=True)
        loop = self._loop
        if not seq or not self.healthy or loop is None:
            return False
        future: asyncio.Future[bool] = loop.create_future()
        # One timer for all waiters rather than one `wait_for` each: this runs for every response.
        deadline = loop.time() + timeout
        self._waiters.append((seq, future, deadline))
        if self._sweeper is None:
            self._sweeper = loop.call_at(deadline, self._sweep)
        return await future

    def _sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = None
        now = self._loop.time()
        waiters = self._waiters
        while waiters and waiters[0][2] <= now:
            _, future, _ = waiters.popleft()
            if not future.done():
                future.set_result(False)
        if waiters:
            self._sweeper = self._loop.call_at(waiters[0][2], self._sweep)

    def _on_committed(self, seq: int) -> None:
        self._committed_seq = max(self._committed_seq, seq)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._committed_seq:
            _, future, _ = waiters.popleft()
            if not future.done():
                future.set_result(True)

    def _release_waiters(self) -> None:
        """The store is failing: nobody should wait for a commit that is not coming soon."""
        while self._waiters:
            _, future, _ = self._waiters.popleft()
            if not future.done():
                future.set_result(False)

    def close(self, timeout: float = 30.0) -> None:
        """Drain: everything queued is committed before this returns (or the timeout passes)."""
        if self._thread is None:
            return
        self._stop_requested = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recorder did not drain within %.0fs; %d records unwritten",
                      timeout, self.stats.submitted - self.stats.committed - self.stats.dead_lettered)
            self._stop_event.set()
            self._thread.join(5)
        self._thread = None

    # -- writer thread -----------------------------------------------------------------------------

    def _run(self, sink: Sink) -> None:
        lower_this_threads_priority(self._niceness)
        pending: collections.deque[tuple[int, Record, bool]] = collections.deque()
        acks = 0  # records in `pending` whose answer waits for their commit
        flushing = False  # a flush_ms timer fired: write everything pending, awaited or not
        backoff = 0.05
        spill_offset: int | None = None  # set while `pending` holds records read from the spill file
        housekeeping_in: float | None = None  # when the sink wants to be called back, though quiet
        while True:
            # Cleared before looking, so a wake that comes while we look is not lost.
            self._wake.clear()
            if self._flush_requested:
                self._flush_requested = False
                flushing = True
            if spill_offset is None:
                acks += self._drain(pending)
            if not pending:
                if self._spill is not None and self._spill.unread and not self._inbox:
                    # Memory is drained: the spill's records are next (they are all newer).
                    records, spill_offset = self._spill.read(self._batch_size)
                    pending.extend((0, record, False) for record in records)
                    if not pending:
                        spill_offset = None
                        continue
                elif self._stop_requested:
                    break
                else:
                    housekeeping_in = self._sleep(sink, housekeeping_in)
                    continue
            elif spill_offset is None and not (acks or flushing or self._stop_requested
                                               or len(pending) >= self._batch_size or not self.healthy
                                               or (self._spill is not None and self._spill.unread)):
                # Only records nobody waits for: their flush_ms timer, an answer or more records wake us.
                housekeeping_in = self._sleep(sink, housekeeping_in)
                continue
            batch = [pending[i] for i in range(min(len(pending), self._batch_size))]
            try:
                self._write(sink, [record for _, record, _ in batch])
            except TransientStoreError as exc:
                self._note_failure(exc)
                if self._stop_event.wait(backoff):
                    break
                backoff = min(backoff * 2, self._retry_max_s)
                sink = self._reopen(sink)
                continue
            backoff = 0.05
            for _ in batch:
                pending.popleft()
            if spill_offset is not None:
                assert self._spill is not None and not pending  # a spill batch is read whole
                self._note_success(batch, in_memory=False)
                if self._spill.committed(spill_offset):
                    log.warning("spill file %s written to the store and emptied", self._spill.path)
                spill_offset = None
            else:
                acks -= sum(ack for _, _, ack in batch)
                self._note_success(batch)
            if not pending:
                flushing = False
            # After the waiters of this batch were released; `idle` when nothing else is queued.
            housekeeping_in = self._maintain(sink, idle=not pending and not self._inbox)
        self._keep_unwritten(pending, spill_offset)
        sink.shutdown()
        if self._spill is not None:
            self._spill.close()

    def _drain(self, pending: collections.deque[tuple[int, Record, bool]]) -> int:
        """Move what the event loop submitted into `pending`; returns how many of those are awaited."""
        inbox = self._inbox
        acks = 0
        while inbox:
            item = inbox.popleft()
            acks += item[2]
            pending.append(item)
        return acks

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

    def _keep_unwritten(self, pending: collections.deque, spill_offset: int | None) -> None:
        """A forced stop (the store is down): memory's records go to the front of the spill file."""
        if self._spill is None:
            return
        if spill_offset is not None:
            pending.clear()  # read from the spill, which still holds them
            self._spill.rewind()
        self._drain(pending)
        if pending:
            log.warning("keeping %d unwritten records in %s for the next start", len(pending), self._spill.path)
            try:
                self._spill.prepend([record for _, record, _ in pending])
            except OSError as exc:
                log.error("could not keep unwritten records in %s: %s", self._spill.path, exc)

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
                self._loop.call_soon_threadsafe(self._release_waiters)
        self.healthy = False
        self.last_error = message

    def _note_success(self, batch: list[tuple[int, Record, bool]], *, in_memory: bool = True) -> None:
        if not self.healthy:
            log.warning("store writable again; writing the backlog")
            self.healthy = True
            self.last_error = None
        self.stats.committed += len(batch)
        self.stats.batches += 1
        if self._on_commit is not None:
            self._on_commit(sum(isinstance(record, ResponseRecord) for _, record, _ in batch))
        if not in_memory:
            return
        size = sum(record.size() for _, record, _ in batch)
        with self._pending_lock:
            self._pending_bytes -= size
        if self._loop is not None and any(ack for _, _, ack in batch):
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
