"""The PostgreSQL side of the recorder: each batch split by conversation over a few connections,
the parts written at the same time, each in its own transaction (pg_shard.py).

One connection leaves the server idle while the recorder builds rows, and the recorder idle while
the server checks foreign keys and fills indexes: one backend uses well under one core. With the
batch cut by conversation the parts never contend for a session row, so the backends work side by
side (they meet only on the rollup rows, upserted in one order just before the COMMIT).

Each conversation keeps to one part (its session key picks it), so the part's builder caches its
sessions, and an answer goes to the part its request went to. A batch commits part by part: when
one part fails, the others' records are remembered as written, and the retry (the same records,
or them one at a time) leaves those out instead of writing them twice.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from chatledger.pricing import Pricer
from chatledger.store.batch import KnownCommitted, record_uuid
from chatledger.store.pg_shard import PgShard
from chatledger.store.pg_vacuum import Vacuumer
from chatledger.store.records import Record, RequestRecord
from chatledger.store.writer import TransientStoreError

# Requests whose answer has not been written yet, by request uuid: their part. Past the cap the oldest
# go; their answers then go to the first part, which reads the (long committed) request from the table.
OPEN_REQUESTS = 50_000


def _conversation_hash(record: RequestRecord) -> int:
    """The same for every request of a conversation: of what names its session (an explicit session
    id, else the key and the opening text, as sessions.session_key), but cheaper than its md5."""
    if record.session_hint:
        return zlib.crc32(record.session_hint.encode("utf-8", "surrogatepass"))
    scope = zlib.crc32((record.api_key_hash or "").encode())
    return zlib.crc32(record.first_user_text.encode("utf-8", "surrogatepass"), scope)


class PostgresSink:
    def __init__(self, conninfo: str, *, session_timeout_ms: int, pricer: Pricer | None = None,
                 connections: int = 2) -> None:
        if connections < 1:
            raise ValueError("the recorder needs at least one connection")
        self._shards: list[PgShard] = []
        try:
            for _ in range(connections):
                self._shards.append(PgShard(conninfo, session_timeout_ms=session_timeout_ms, pricer=pricer))
        except BaseException:
            self.close()
            raise
        # The first part is written on the recorder's thread, each other one on a thread of its own
        # (created from the recorder's, so with its lower priority).
        self._threads = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"chatledger-writer-pg{index}")
                         for index in range(1, connections)]
        self._request_parts: collections.OrderedDict[str, int] = collections.OrderedDict()
        # Records of a batch that failed in part which the parts that did commit had written.
        self._known = KnownCommitted()
        # Where autovacuum is off, the session versions each batch leaves behind would pile up.
        self._vacuumer = Vacuumer(conninfo)
        self._vacuumer.start()

    def reconnect(self) -> None:
        for shard in self._shards:
            shard.reconnect()

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def shutdown(self) -> None:
        self._vacuumer.stop()
        for thread in self._threads:
            thread.shutdown()
        self.close()

    def maintain(self, idle: bool) -> float | None:
        """Nothing to do between batches: the search indexer runs on its own connection."""
        return None

    def write(self, records: list[Record]) -> None:
        parts = self._split(self._known.left_out(records))
        busy = [index for index, part in enumerate(parts) if part]
        if len(busy) == 1:  # a quiet moment: one conversation, or one part's worth
            self._shards[busy[0]].write(parts[busy[0]])
        elif busy:
            self._write_parts(parts, busy)
        self._known.written(records)
        for record in records:
            if not isinstance(record, RequestRecord):
                self._request_parts.pop(record.request_id, None)

    def _write_parts(self, parts: list[list[Record]], busy: list[int]) -> None:
        """All parts at once; when some fail, remember what the others wrote and raise the first error
        (a transient one if any is, so the writer retries rather than setting records aside)."""
        pending: list[tuple[int, Future[None]]] = [
            (index, self._threads[index - 1].submit(self._shards[index].write, parts[index]))
            for index in busy if index]
        errors: list[BaseException] = []
        committed: list[list[Record]] = []
        if busy[0] == 0:
            self._attempt(lambda: self._shards[0].write(parts[0]), parts[0], committed, errors)
        for index, future in pending:
            self._attempt(future.result, parts[index], committed, errors)
        if errors:
            for part in committed:
                self._known.add(record_uuid(record) for record in part)
            raise next((e for e in errors if isinstance(e, TransientStoreError)), errors[0])

    @staticmethod
    def _attempt(write: Callable[[], None], part: list[Record], committed: list[list[Record]],
                 errors: list[BaseException]) -> None:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - raised once every part has had its turn
            errors.append(exc)
        else:
            committed.append(part)

    def _split(self, records: list[Record]) -> list[list[Record]]:
        """Requests by their conversation's key, answers after their requests."""
        count = len(self._shards)
        parts: list[list[Record]] = [[] for _ in range(count)]
        if count == 1:
            parts[0] = records
            return parts
        open_parts = self._request_parts
        for record in records:
            if isinstance(record, RequestRecord):
                part = _conversation_hash(record) % count
                open_parts[record.request_id] = part
            else:
                # An answer whose request an earlier run wrote goes anywhere: its part reads the request.
                part = open_parts.get(record.request_id, 0)
            parts[part].append(record)
        while len(open_parts) > OPEN_REQUESTS:
            open_parts.popitem(last=False)
        return parts
