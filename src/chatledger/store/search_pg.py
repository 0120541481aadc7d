"""The PostgreSQL search index, filled behind the recorder from the queue `search_pending`.

The recorder only queues each new response id (migration 0003's `search_pending`) in the
transaction that writes the response; computing the tsvector and inserting it into the GIN index
happens here, in the background indexer's own transactions, off the recorder's path. Every
replica runs an indexer on the same queue: a chunk is claimed with `FOR UPDATE SKIP LOCKED`, so two
indexers never take the same ids, and taken off the queue in the transaction that writes its search
rows, so a crash (or a lost connection) puts the whole chunk back. A response deleted before its
turn is simply not found; one deleted while its chunk is indexed waits for that commit (the rows
are read `FOR KEY SHARE`, as the foreign key check would lock them anyway) and then takes its search
row with it through the foreign key's cascade. Searches join `responses`, so they never show a row
the ledger no longer has.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from chatledger.store import search_index
from chatledger.store.pg_shard import CONNECT_OPTIONS

CLAIM = """
DELETE FROM search_pending WHERE id IN (
    SELECT id FROM search_pending ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
) RETURNING id
"""
# Locked like the foreign key check would lock them: a concurrent DELETE waits for this chunk.
READ_ROWS = """
SELECT s.id, q.path, q.openai_request, s.openai_response FROM responses s JOIN requests q ON q.id = s.request_id
WHERE s.id = ANY(%s) FOR KEY SHARE OF s
"""
INSERT = """
INSERT INTO search_index (id, prompt, response)
SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[])
ON CONFLICT (id) DO NOTHING
"""
T = TypeVar("T")
EXACT_BACKLOG_UP_TO = 100_000
BACKLOG = f"SELECT count(*) FROM (SELECT 1 FROM search_pending LIMIT {EXACT_BACKLOG_UP_TO}) AS pending"
# Past that, counting would read the whole queue for a figure on /health: the span of its ids (two
# index probes) bounds it from above instead.
BACKLOG_SPAN = "SELECT COALESCE(max(id) - min(id) + 1, 0) FROM search_pending"


def _text(value: str) -> str:
    """PostgreSQL's text cannot hold NUL. The rows have none (the recorder replaced it), but a JSON
    body may spell one as an escape, which the parsed prompt or answer then holds."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class _Connection:
    """One connection, one transaction at a time, reopened after it broke."""

    def __init__(self, conninfo: str, application_name: str) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        with self._lock:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(self._conninfo, autocommit=False,
                                                   **{**CONNECT_OPTIONS, "application_name": self._application_name})
            try:
                with self._connection.transaction():
                    return work(self._connection)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._close()
                raise

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None


class PostgresSearchIndex:
    def __init__(self, conninfo: str) -> None:
        self._indexing = _Connection(conninfo, "chatledger-search")
        # /health asks for the backlog from other threads, while a chunk may be in hand: not on its connection.
        self._counting = _Connection(conninfo, "chatledger-search-backlog")

    def index_next(self, limit: int) -> int:
        """Claim up to `limit` queued ids and write their search rows, in one transaction; returns how
        many left the queue (those whose response is gone count too: they are done with)."""
        def work(connection: psycopg.Connection) -> int:
            ids = [row[0] for row in connection.execute(CLAIM, (limit,)).fetchall()]
            if not ids:
                return 0
            documents: tuple[list[int], list[str], list[str]] = ([], [], [])
            for row_id, path, request, response in connection.execute(READ_ROWS, (ids,)).fetchall():
                prompt, answer = search_index.document(path, request, response)
                documents[0].append(row_id)
                documents[1].append(_text(prompt))
                documents[2].append(_text(answer))
                time.sleep(0)  # give the GIL back between rows: the event loop comes first
            if documents[0]:
                connection.execute(INSERT, documents)
            return len(ids)

        return self._indexing.run(work)

    def backlog(self) -> int:
        def work(connection: psycopg.Connection) -> int:
            count = connection.execute(BACKLOG).fetchone()[0]  # type: ignore[index]
            if count < EXACT_BACKLOG_UP_TO:
                return count
            return max(count, connection.execute(BACKLOG_SPAN).fetchone()[0])  # type: ignore[index]

        return self._counting.run(work)

    def tidy(self) -> int:
        """Nothing to do: a deleted response takes its search row with it (ON DELETE CASCADE), and its
        queued id, if any, is dropped when an indexer claims it."""
        return 0

    def forget(self, response_ids: list[int]) -> None:
        """Nothing to do, for the same reason as `tidy`."""

    def catch_up(self, chunk: int = 2000) -> int:
        """Index everything queued now (for the CLI and the benchmark)."""
        total = 0
        while count := self.index_next(chunk):
            total += count
        return total

    def close(self) -> None:
        self._indexing.close()
        self._counting.close()
