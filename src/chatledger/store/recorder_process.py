"""The recorder in a process of its own (`WRITER_PROCESS=true`): `python -m chatledger.store.recorder_process`.

The gateway's process appends every record to its journal, as always, and tells this process how far
the journal goes (after a first line with the settings, `e <segment> <offset>` lines on stdin); this
process reads the records back, writes them to the store with the same Writer and sink as the
in-process recorder, runs the search indexer, and reports after each commit or failure (one JSON line
on stdout: how far the commits got, the counters, whether the store is healthy). The gateway answers
its commit waiters from those lines.

Why a process: the recorder's Python (rows, sessions, costs) and the event loop's no longer share a
GIL, so on a machine with a spare core they run in parallel, and on any machine the loop never waits
for the recorder's thread to hand the GIL back.

It stops on `q` (after writing the journal up to the last position it was told) or when stdin closes
(the gateway was killed: after writing every whole record the journal holds), then exits. Terminal
signals are the gateway's business: SIGINT and SIGTERM are ignored, so Ctrl-C drains through the
gateway's own shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from chatledger.config import GatewayConfig
from chatledger.pricing import Pricer
from chatledger.store import Store
from chatledger.store.journal import Journal
from chatledger.store.search_indexer import SearchIndexer
from chatledger.store.writer import Writer

log = logging.getLogger("chatledger.writer")

STATUS_EVERY_S = 2.0  # the search backlog and the counters, also when nothing commits
DRAIN_TIMEOUT_S = 300.0


class Reporter:
    """Writes the status lines (from the writer thread and the main thread: one lock)."""

    def __init__(self, writer: Writer, journal: Journal, indexer: SearchIndexer | None) -> None:
        self._writer = writer
        self._journal = journal
        self._indexer = indexer
        self._lock = threading.Lock()
        self.search_backlog: int | None = None

    def report(self) -> None:
        writer, stats, indexer = self._writer, self._writer.stats, self._indexer
        status: dict[str, Any] = {
            "through": self._journal.committed_through, "committed": stats.committed, "batches": stats.batches,
            "failures": stats.failures, "dead_lettered": stats.dead_lettered, "replayed": stats.replayed,
            "healthy": writer.healthy, "last_error": writer.last_error}
        if indexer is not None:
            status["search"] = {"indexed": indexer.indexed, "backlog": self.search_backlog,
                                "last_error": indexer.last_error}
        line = orjson.dumps(status) + b"\n"
        # A gone gateway (BrokenPipeError): the commits and the journal's progress say it all.
        with self._lock, contextlib.suppress(BrokenPipeError):
            os.write(1, line)


def _control(writer: Writer, journal: Journal, indexer: SearchIndexer | None, done: threading.Event) -> None:
    """The gateway's notes, until `q` or the end of stdin."""
    for line in sys.stdin.buffer:
        kind, _, rest = line.partition(b" ")
        if kind in (b"e", b"E"):  # E: someone waits for these records' commit
            segment, offset = rest.split()
            writer.follow_to((int(segment), int(offset)), urgent=kind == b"E")
        elif kind == b"f" and indexer is not None:
            indexer.forget([int(value) for value in rest.split(b",") if value.strip()])
        elif kind.strip() == b"q":
            break
    else:
        # The gateway is gone without a word (killed): the journal may hold answers it sent after its
        # last note. Nobody appends any more, so everything whole in the files is to be written.
        writer.follow_to((journal.last_segment(), sys.maxsize))
    done.set()


async def run(spec: dict[str, Any]) -> None:
    store = Store.open(database_path=Path(spec["database_path"]), database_url=spec.get("database_url"),
                       session_timeout_ms=spec["session_timeout_ms"], synchronous=spec["synchronous"],
                       busy_timeout_ms=spec["busy_timeout_ms"], run_migrations=False)
    backend = store.search_backend() if spec.get("search_indexer", True) else None
    indexer = SearchIndexer(backend) if backend is not None else None
    if indexer is not None:
        indexer.start()
    journal = Journal(Path(spec["journal"]), follow=tuple(spec["replay_before"]))  # type: ignore[arg-type]
    pricer = Pricer(GatewayConfig.model_validate(spec["config"])) if spec.get("config") is not None else None
    reporter: Reporter | None = None
    writer = Writer(partial(store.sink, pricer, connections=spec["pg_connections"]),
                    batch_size=spec["batch_size"], flush_ms=spec["flush_ms"],
                    dead_letter_path=Path(spec["dead_letter_path"]),
                    journal=journal, on_commit=indexer.notify if indexer is not None else None,
                    on_progress=lambda: reporter.report() if reporter is not None else None, follow=True)
    reporter = Reporter(writer, journal, indexer)
    writer.start()
    done = threading.Event()
    threading.Thread(target=_control, args=(writer, journal, indexer, done), name="chatledger-recorder-control",
                     daemon=True).start()
    reporter.report()  # ready: the gateway learns where the commits stand
    while not await asyncio.to_thread(done.wait, STATUS_EVERY_S):
        if indexer is not None:
            reporter.search_backlog = await asyncio.to_thread(indexer.backlog)
        reporter.report()
    started = time.monotonic()
    await asyncio.to_thread(writer.close, DRAIN_TIMEOUT_S)
    log.debug("recorder process drained in %.2fs", time.monotonic() - started)
    reporter.report()
    if indexer is not None:
        await asyncio.to_thread(indexer.stop)
    store.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec = orjson.loads(sys.stdin.buffer.readline())  # the gateway's first line
    logging.basicConfig(level=spec.get("log_level", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s (recorder): %(message)s")
    if spec.get("niceness"):
        os.nice(spec["niceness"])  # the whole process: under contention the event loop comes first
    asyncio.run(run(spec))


if __name__ == "__main__":
    main()
