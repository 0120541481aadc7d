"""WAL checkpoints off the recorder's thread.

Left to itself SQLite checkpoints inside the commit that crosses 1000 WAL pages: that commit then
copies pages and fsyncs, and every response waiting on the batch waits for it too (milliseconds).
The recorder's connection turns automatic checkpoints off and, when the WAL has grown past a size,
wakes this thread, which runs PASSIVE checkpoints (they never block the writer) until one catches
up with the end of the WAL; the writer's next transaction then starts the WAL over. It runs at a
lower CPU priority than the event loop and the recorder.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

from chatledger.store.engine import configure_sqlite_connection
from chatledger.store.threads import lower_this_threads_priority

log = logging.getLogger("chatledger.writer")

MAX_PASSES = 20
# Behind the event loop and the recorder: a checkpoint never holds up a commit, so it can wait for CPU.
NICENESS = 10


class Checkpointer:
    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="chatledger-checkpointer", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(30)

    def _run(self) -> None:
        lower_this_threads_priority(NICENESS)
        connection: sqlite3.Connection | None = None
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                if connection is None:
                    connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                    configure_sqlite_connection(connection, self._synchronous, busy_timeout_ms=0)
                for _ in range(MAX_PASSES):
                    _, frames, done = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames == done or self._stopping:
                        break
            except sqlite3.Error as exc:
                # A busy or failing store: the recorder reports store trouble; try again when asked.
                log.debug("checkpoint skipped: %s", exc)
                if connection is not None:
                    with contextlib.suppress(sqlite3.Error):
                        connection.close()
                connection = None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
