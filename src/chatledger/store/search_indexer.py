"""The thread that keeps the search index behind the ledger, in the machine's spare time.

The recorder wakes it after each commit (`notify`: setting an event, nothing more). It waits until
`min_rows` rows are new or `delay` seconds have passed (indexing one row per transaction would cost
FTS5 a segment each), then indexes chunks until it has caught up. On Linux it runs at the lowest CPU
priority, so under load the event loop and the recorder come first and search falls behind; it
catches up when the load drops. Search results therefore trail the ledger by about `delay` seconds
when the machine has time to spare, and by the backlog (`backlog()`, on /health) when it has not.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Protocol

from chatledger.store.threads import lower_this_threads_priority

log = logging.getLogger("chatledger.search")

LOWEST_PRIORITY = 19


class SearchBackend(Protocol):
    def index_next(self, limit: int) -> int: ...  # rows taken off the backlog; 0 when caught up
    def backlog(self) -> int: ...
    def tidy(self) -> int: ...  # once at start: drop what the ledger no longer has
    def forget(self, response_ids: list[int]) -> None: ...
    def close(self) -> None: ...


class SearchIndexer:
    def __init__(self, backend: SearchBackend, *, chunk: int = 128, min_rows: int = 256, delay: float = 0.25,
                 niceness: int = LOWEST_PRIORITY) -> None:
        self._backend = backend
        self._chunk = chunk
        self._min_rows = min_rows
        self._delay = delay
        self._niceness = niceness
        self._wake = threading.Event()
        self._pending = 0  # rows committed since the last run, as the recorder counted them
        self._forgotten: collections.deque[list[int]] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.indexed = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chatledger-search", daemon=True)
        self._thread.start()

    def notify(self, committed_rows: int) -> None:
        """Called by the recorder after a commit (from its thread)."""
        self._pending += committed_rows
        self._wake.set()

    def forget(self, response_ids: list[int]) -> None:
        """Responses deleted from the ledger: the thread takes them out of the index shortly."""
        if response_ids:
            self._forgotten.append(response_ids)
            self._wake.set()

    def backlog(self) -> int | None:
        try:
            return self._backend.backlog()
        except Exception as exc:  # noqa: BLE001 - a figure for /health; the store reports its own failures
            log.debug("search backlog unknown: %s", exc)
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the chunk in hand; what is left is indexed at the next start."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._backend.close()

    def _run(self) -> None:
        lower_this_threads_priority(self._niceness)
        try:
            self._backend.tidy()
        except Exception as exc:  # noqa: BLE001 - tidying is a courtesy; indexing goes on without it
            log.warning("search index not tidied: %s", exc)
        self._catch_up()  # whatever an earlier run left behind
        while not self._stopping:
            self._wake.wait()
            if self._stopping:
                break
            self._forget()
            # Let rows gather: FTS5 writes a segment per transaction, so bigger ones cost less per row.
            deadline = time.monotonic() + self._delay
            while self._pending < self._min_rows and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(remaining, 0.05))
            self._wake.clear()
            self._pending = 0
            self._catch_up()

    def _forget(self) -> None:
        while self._forgotten:
            response_ids = self._forgotten.popleft()
            try:
                self._backend.forget(response_ids)
            except Exception as exc:  # noqa: BLE001 - left for `tidy` at the next start
                log.warning("could not take %d deleted responses out of the search index: %s",
                            len(response_ids), exc)

    def _catch_up(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                count = self._backend.index_next(self._chunk)
            except Exception as exc:  # noqa: BLE001 - a busy or failing store: search waits, recording goes on
                if str(exc) != self.last_error:
                    log.warning("search indexing paused: %s", exc)
                self.last_error = str(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.last_error = None
            self.indexed += count
            if count < self._chunk:
                return
