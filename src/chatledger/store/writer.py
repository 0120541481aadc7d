"""The recorder: one thread owns the write connection and commits records in batches.

The event loop only appends to a queue (no I/O, no serialization). The thread gathers a batch (up to
`batch_size` records, or whatever arrived within `flush_ms`; at once when someone awaits the batch),
hands it to the sink as one transaction, then wakes the awaiting responses with a single
`call_soon_threadsafe`. When the sink fails for a reason that may pass (locked, disk full, server
gone) the batch is kept and retried with backoff, the cause logged once; records that fail on their
own (a bug, a constraint) are written one by one and the bad ones set aside in a dead-letter file.
When the backlog in memory passes `max_pending_bytes`, new records go to a spill file (spill.py)
instead of being dropped, and are written, in order and after the backlog, once the store keeps up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from chatledger.store.records import Record, ResponseRecord
from chatledger.store.spill import Spill

log = logging.getLogger("chatledger.writer")

_STOP = object()
_SPILLED = object()


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
    ) -> None:
        self._sink_factory = sink_factory
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000
        self._max_pending_bytes = max_pending_bytes
        self._dead_letter_path = dead_letter_path
        self._retry_max_s = retry_max_s
        # Opened here, so a spill file left by an earlier run is replayed (before anything newer).
        self._spill = Spill(spill_path) if spill_path is not None else None
        self._queue: queue.SimpleQueue[tuple[int, Record, bool] | object] = queue.SimpleQueue()
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
        self._queue.put((self._seq, record, ack))
        return self._seq

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
        self._queue.put(_SPILLED)  # wakes the writer thread, which may be waiting for memory's records
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
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recorder did not drain within %.0fs; %d records unwritten",
                      timeout, self.stats.submitted - self.stats.committed - self.stats.dead_lettered)
            self._stop_event.set()
            self._thread.join(5)
        self._thread = None

    # -- writer thread -----------------------------------------------------------------------------

    def _run(self, sink: Sink) -> None:
        pending: collections.deque[tuple[int, Record, bool]] = collections.deque()
        stopping = False
        backoff = 0.05
        spill_offset: int | None = None  # set while `pending` holds records read from the spill file
        housekeeping_in: float | None = None  # when the sink wants to be called back, though quiet
        while True:
            if not pending:
                if self._spill is not None and self._spill.unread and self._queue.empty():
                    # Memory is drained: the spill's records are next (they are all newer).
                    records, spill_offset = self._spill.read(self._batch_size)
                    pending.extend((0, record, False) for record in records)
                elif stopping:
                    break
                else:
                    try:
                        stopping = self._take(pending, block=True, timeout=housekeeping_in)
                    except queue.Empty:  # quiet: the housekeeping deferred so far is due
                        housekeeping_in = self._maintain(sink, idle=True)
                    continue
            if spill_offset is None:
                stopping = self._gather(pending, stopping)
            batch = [pending[i] for i in range(min(len(pending), self._batch_size))]
            if not batch:
                continue
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
                self._note_success(batch)
            # After the waiters of this batch were released; `idle` when nothing else is queued.
            housekeeping_in = self._maintain(sink, idle=not pending and self._queue.empty())
        self._keep_unwritten(pending, spill_offset)
        sink.shutdown()
        if self._spill is not None:
            self._spill.close()

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
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                pending.append(item)
        if pending:
            log.warning("keeping %d unwritten records in %s for the next start", len(pending), self._spill.path)
            try:
                self._spill.prepend([record for _, record, _ in pending])
            except OSError as exc:
                log.error("could not keep unwritten records in %s: %s", self._spill.path, exc)

    def _take(self, pending: collections.deque, *, block: bool, timeout: float | None = None) -> bool:
        """Move one item from the queue to `pending`; returns True when the stop marker came."""
        item = self._queue.get(block=block, timeout=timeout)
        if item is _STOP:
            return True
        if item is not _SPILLED:
            pending.append(item)
        return False

    def _gather(self, pending: collections.deque, stopping: bool) -> bool:
        deadline = time.monotonic() + self._flush_s
        while len(pending) < self._batch_size:
            try:
                stopping = self._take(pending, block=False) or stopping
                continue
            except queue.Empty:
                pass
            # Nothing more right now: flush at once if anyone is waiting, else wait up to flush_ms.
            if stopping or any(ack for _, _, ack in pending) or not self.healthy or \
                    (self._spill is not None and self._spill.unread):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                stopping = self._take(pending, block=True, timeout=remaining) or stopping
            except queue.Empty:
                break
        return stopping

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
