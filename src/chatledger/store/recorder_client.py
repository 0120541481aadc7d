"""The gateway's side of the recorder process (`WRITER_PROCESS=true`; recorder_process.py is the other).

On the event loop a record costs what it costs with the in-process recorder minus the hand-over: the
journal append. Once per loop iteration that appended something, one short line on the process's stdin
says how far the journal goes. The process's status lines (how far its commits got) come back on a pipe
the loop watches, and release the answers waiting for their commit (`WRITER_ACK=commit`, a recorder
that fell behind, the query API's read-your-writes). The interface is the in-process Writer's.

If the process dies it is started again; the records it may have committed without saying so are
checked against the store before they are written (they count as replayed), so none is written twice.

If the journal cannot be written (a full disk, a failing one), records cannot reach the process any
more: it is told to write what the journal holds and exit, and then a writer thread in this process
(`fallback`, no journal: answers wait for their commits, as the in-process recorder's do without a
journal) writes the records that came since, which wait in its memory meanwhile, so that no answer
is written before its request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from chatledger.config import GatewayConfig, Settings
from chatledger.store.journal import Journal, Position, Slot
from chatledger.store.records import Record
from chatledger.store.waiters import CommitWaiters
from chatledger.store.writer import LAG_BYTES, LAG_RECORDS, Ack, Writer, WriterStats

log = logging.getLogger("chatledger.writer")

RESTART_BACKOFF_S = (0.2, 10.0)
FORGET_CHUNK = 1000
CHECKPOINTS = 8192


def recorder_spec(settings: Settings, journal_directory: Path, dead_letter_path: Path,
                  config: GatewayConfig | None) -> dict[str, Any]:
    """What the recorder process needs to write as the gateway's own writer would (`config`: for the
    prices; None records no cost)."""
    return {"database_path": str(settings.database_path.resolve()), "database_url": settings.database_url,
            "session_timeout_ms": settings.session_timeout, "synchronous": settings.sqlite_synchronous,
            "busy_timeout_ms": settings.sqlite_busy_timeout_ms, "batch_size": settings.writer_batch_size,
            "flush_ms": settings.writer_flush_ms,
            "pg_connections": settings.writer_pg_connections, "niceness": settings.writer_niceness,
            "journal": str(journal_directory.resolve()), "log_level": settings.log_level,
            "dead_letter_path": str(dead_letter_path.resolve()),
            "config": config.model_dump(mode="json") if config is not None else None}


class RecorderProcess:
    """The recorder process, seen from the gateway's event loop (the in-process Writer's interface)."""

    def __init__(self, journal: Journal, slot: Slot, spec: dict[str, Any], *, ack: Ack,
                 max_lag: int = LAG_RECORDS, fallback: Callable[[], Writer] | None = None) -> None:
        self._journal = journal
        self._slot = slot
        self._spec = spec
        self._ack = ack
        self._max_lag = max_lag
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stdin: int | None = None
        self._stdout: int | None = None
        self._partial = b""
        self._outbox = b""
        self._outbox_timer: asyncio.TimerHandle | None = None
        self._announce_scheduled = False
        self._announced: Position = (0, 0)
        self._urgent = False  # the next note says that someone waits (`E`): commit without flush_ms
        self._through: Position = journal.committed_through
        # (journal end, records and bytes submitted by then), once per loop iteration that journaled
        # something, until the commits pass it: what the lag is, without an entry per record (a store
        # down for an hour would otherwise cost memory per exchange). Thinned out past CHECKPOINTS.
        self._checkpoints: collections.deque[tuple[Position, int, int]] = collections.deque()
        self._submitted_bytes = 0
        self._committed_count = 0  # records and bytes known committed, as of the last checkpoint passed
        self._committed_bytes = 0
        self._waiters: CommitWaiters[Position] = CommitWaiters()
        self._base = WriterStats()  # what earlier processes had counted
        self._backoff = RESTART_BACKOFF_S[0]
        self._closing = False
        self._healthy = True
        self._last_error: str | None = None
        self.stats = WriterStats()
        self.search: dict[str, Any] | None = None
        self._ready: asyncio.Event | None = None
        self._fallback_factory = fallback
        # Once the journal broke: the in-process writer, started once the process has exited.
        self._fallback: Writer | None = None
        self._fallback_started: asyncio.Event | None = None

    @property
    def journal(self) -> Journal:
        return self._journal

    @property
    def healthy(self) -> bool:
        if self._fallback_started is not None and self._fallback_started.is_set():
            assert self._fallback is not None
            return self._fallback.healthy
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy = value

    @property
    def last_error(self) -> str | None:
        if self._fallback_started is not None and self._fallback_started.is_set():
            assert self._fallback is not None
            return self._fallback.last_error or f"journal: {self._journal.broken}"
        return self._last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._last_error = value

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- the process --------------------------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait (at most `timeout` seconds) for its first report: it has opened
        the store, so the first answers need not wait for its start-up."""
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._spawn((self._journal.first_own_segment, 0))
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            log.warning("recorder process not ready after %.0fs; records wait in the journal meanwhile", timeout)

    def _spawn(self, replay_before: Position) -> None:
        assert self._loop is not None
        if self._closing:
            return
        command = [sys.executable, "-m", "chatledger.store.recorder_process"]
        # Its own process group: Ctrl-C in a terminal reaches the gateway, which drains it. The slot's
        # lock descriptor goes with it, so no other gateway takes the slot while it still writes.
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=0,
                                   pass_fds=(self._slot.fd,))
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._stdin, self._stdout = process.stdin.fileno(), process.stdout.fileno()
        # The spec (which may hold the database password) goes on stdin, not on the command line.
        spec = {**self._spec, "replay_before": replay_before}
        os.write(self._stdin, orjson.dumps(spec) + b"\n")
        os.set_blocking(self._stdin, False)
        os.set_blocking(self._stdout, False)
        self._partial = b""
        self._outbox = b""
        self._announced = (0, 0)
        self._loop.add_reader(self._stdout, self._on_output, process)
        self._announce()
        if self._fallback is not None:
            self._send(b"q\n")  # the journal broke: write what it holds, then exit

    def _on_output(self, process: subprocess.Popen[bytes]) -> None:
        assert self._stdout is not None
        try:
            data = os.read(self._stdout, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_exit(process)
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                status = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("recorder process said something unexpected: %r", line[:200])
                continue
            self._apply(status)

    def _apply(self, status: dict[str, Any]) -> None:
        if self._ready is not None:
            self._ready.set()
        through: Position = (status["through"][0], status["through"][1])
        if through > self._through:
            self._through = through
            self._journal.committed_through = through
        for name in ("committed", "batches", "failures", "dead_lettered", "replayed"):
            setattr(self.stats, name, getattr(self._base, name) + status[name])
        if status["healthy"] and not self.healthy:
            self._backoff = RESTART_BACKOFF_S[0]
        was_healthy = self.healthy
        self.healthy, self.last_error = status["healthy"], status["last_error"]
        self.search = status.get("search")
        checkpoints = self._checkpoints
        while checkpoints and checkpoints[0][0] <= self._through:
            _, self._committed_count, self._committed_bytes = checkpoints.popleft()
        self._waiters.release_through(self._through)
        if was_healthy and not self.healthy:
            self._waiters.release_all()  # nobody should wait for a commit that is not coming soon

    def _on_exit(self, process: subprocess.Popen[bytes]) -> None:
        assert self._loop is not None
        if self._stdout is not None:
            self._loop.remove_reader(self._stdout)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._stdin = self._stdout = None
        if self._closing:
            return
        code = process.wait(5)  # it closed its end: it is exiting
        if self._fallback is not None and code == 0:
            self._start_fallback()
            return
        if self._ready is not None and not self._ready.is_set():
            self._ready.set()  # it died starting: the gateway starts anyway, records wait in the journal
        self._base = WriterStats(**{name: getattr(self.stats, name) for name in WriterStats.__slots__})
        self.healthy = False
        self.last_error = f"recorder process exited ({code}); restarting it"
        log.error("%s in %.1fs", self.last_error, self._backoff)
        self._waiters.release_all()
        # Whatever it had taken from the journal may be committed already: the next one checks.
        self._loop.call_later(self._backoff, self._spawn, self._journal.end)
        self._backoff = min(self._backoff * 2, RESTART_BACKOFF_S[1])

    # -- the event loop's side ------------------------------------------------------------------------

    def submit(self, record: Record, *, urgent: bool = False) -> int:
        """Journal the record; returns 1 (or, once the journal cannot be written, the fallback's
        sequence number; 0 if there is none and the record is lost)."""
        if self._fallback is None and self._journaled(record):
            return 1
        if self._fallback is not None:
            return self._fallback.submit(record, urgent=urgent)  # counted in the stats they share
        return 0

    def _journaled(self, record: Record) -> bool:
        """Append the record for the process; False when the journal cannot take it: from then on
        the fallback takes the records, or, without one, the record is counted as dropped."""
        if self._journal.append(record) is None:
            if self._fallback_factory is not None:
                self._break_to_fallback()
                return False
            self.stats.submitted += 1
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error("the journal %s cannot be written (%s), so the recorder process cannot get records: "
                          "%d dropped so far", self._journal.directory, self._journal.broken, self.stats.dropped)
            return False
        self.stats.submitted += 1
        self._submitted_bytes += record.size()
        if not self._announce_scheduled:
            self._announce_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._announce)
        return True

    def _break_to_fallback(self) -> None:
        """The journal broke: the process writes what it holds and exits, then the fallback takes over."""
        assert self._fallback_factory is not None
        log.error("the journal %s cannot be written (%s): the recorder process writes what it holds, then "
                  "a recorder thread in this process takes the new records (answers now wait for the database)",
                  self._journal.directory, self._journal.broken)
        self._fallback = self._fallback_factory()
        self._fallback_started = asyncio.Event()
        self._fallback.stats = self.stats  # one set of figures for /health, whichever writes
        if self._stdin is not None:
            self._announce()
            self._send(b"q\n")
        # No process (it died and is about to be started again): the next one drains and exits.

    def _start_fallback(self) -> None:
        assert self._fallback is not None and self._fallback_started is not None
        self._fallback.start()
        self._waiters.release_all()  # the journal's part is in: nothing more comes through it
        self._fallback_started.set()

    def _announce(self) -> None:
        self._announce_scheduled = False
        end = self._journal.end
        checkpoints = self._checkpoints
        if not checkpoints or checkpoints[-1][0] < end:
            checkpoints.append((end, self.stats.submitted - self.stats.dropped, self._submitted_bytes))
            if len(checkpoints) > CHECKPOINTS:  # keep every other one: the lag only looks coarser
                self._checkpoints = collections.deque([*list(checkpoints)[-2::-2][::-1], checkpoints[-1]])
        if self._stdin is None or (end <= self._announced and not self._urgent):
            return
        self._announced = end
        self._send(b"%s %d %d\n" % (b"E" if self._urgent else b"e", *end))
        self._urgent = False

    def _send(self, data: bytes) -> None:
        """Write to the process's stdin (on the loop's thread); what the pipe cannot take yet waits."""
        self._outbox += data
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        self._outbox_timer = None
        if self._stdin is None:
            self._outbox = b""  # gone: _on_exit starts another, which is told where the journal ends
            return
        try:
            written = os.write(self._stdin, self._outbox)
        except BlockingIOError:
            written = 0
        except OSError:
            self._outbox = b""
            return
        self._outbox = self._outbox[written:]
        if self._outbox and self._outbox_timer is None:  # the process is busy: try again shortly
            assert self._loop is not None
            self._outbox_timer = self._loop.call_later(0.005, self._flush_outbox)

    @property
    def lag(self) -> int:
        """Records journaled and not known to be committed (at most a loop iteration's worth more)."""
        if self._fallback is not None:
            return self._fallback.lag
        return self.stats.submitted - self.stats.dropped - self._committed_count

    async def submit_and_wait(self, record: Record, timeout: float) -> bool:
        """As Writer.submit_and_wait: True once the record is durable (journaled, or committed)."""
        if self._fallback is None and self._journaled(record):
            if (self._ack == "journal" and self.lag <= self._max_lag
                    and self._submitted_bytes - self._committed_bytes <= LAG_BYTES):
                return True
            return await self._wait_for(self._journal.end, timeout) or True
        if self._fallback is not None:
            return await self._fallback.submit_and_wait(record, timeout)
        return False

    async def settled(self, timeout: float) -> bool:
        """Wait until everything journaled so far is committed (at most `timeout` seconds)."""
        if self._fallback is not None:
            assert self._fallback_started is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fallback_started.wait(), timeout)
            return self._fallback_started.is_set() and await self._fallback.settled(timeout)
        end = self._journal.end
        if end <= self._through:
            return True
        return await self._wait_for(end, timeout)

    def settle(self, timeout: float = 10.0) -> bool:
        """`settled`, for a thread other than the event loop's (tests, tools); blocks."""
        if self._loop is None:
            return True
        return asyncio.run_coroutine_threadsafe(self.settled(timeout), self._loop).result(timeout + 1)

    async def _wait_for(self, position: Position, timeout: float) -> bool:
        if not self.healthy or self._loop is None:
            return False
        self._urgent = True  # the process commits what it has now, not with its next flush_ms batch
        self._announce()
        return await self._waiters.add(self._loop, position, timeout)

    def forget(self, response_ids: list[int]) -> None:
        """Responses deleted from the ledger (any thread): the process's search indexer takes them out
        (should the process be gone meanwhile, the index drops them at its next start)."""
        if self._loop is None or not response_ids:
            return
        lines = b"".join(b"f " + ",".join(map(str, response_ids[start:start + FORGET_CHUNK])).encode() + b"\n"
                         for start in range(0, len(response_ids), FORGET_CHUNK))
        with contextlib.suppress(RuntimeError):  # a closed loop: shutting down
            self._loop.call_soon_threadsafe(self._send, lines)

    def close(self, timeout: float = 30.0) -> None:
        """Drain (from a thread other than the loop's): the process writes everything journaled, then
        exits; past the timeout it is stopped and the rest waits in the journal for the next start."""
        self._closing = True
        process = self._process
        if process is not None and process.poll() is None and self._stdin is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(self._stdin, True)
                os.write(self._stdin, b"e %d %d\nq\n" % self._journal.end)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("recorder process did not drain within %.0fs; the rest is kept in the journal %s",
                          timeout, self._journal.directory)
                process.kill()
                process.wait()
        progress = self._journal.read_progress()
        if progress is not None and progress > self._journal.committed_through:
            self._journal.committed_through = progress  # so closing it tidies the segments it can
        self._journal.close()
        if self._fallback is not None:
            assert self._fallback_started is not None and self._loop is not None
            if not self._fallback_started.is_set():  # stopped while the process drained the journal
                async def start() -> None:
                    self._start_fallback()
                asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout)
            self._fallback.close(timeout)


# What the gateway records through: the writer thread in its own process, or a recorder process.
Recorder = Writer | RecorderProcess
