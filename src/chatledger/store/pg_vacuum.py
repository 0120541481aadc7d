"""VACUUM for the two tables the gateway churns, on a PostgreSQL where autovacuum will not.

Each batch writes a new version of every session it touches (an UPDATE of indexed columns, so never
HOT: every index of `sessions` gets a new entry), and `search_pending` is a queue whose rows are
deleted soon after they are written. Unvacuumed, their indexes fill with entries of dead rows that
every lookup and insert must step over: the recorder's server CPU per batch kept rising, and averaged
41 ms instead of 36 over 200,000 exchanges (bench/writer_pg.py), and a claim of 256 queued ids took
twice as long once 200,000 had gone through the queue (2.1 ms, then 4.3).
Autovacuum takes care of that where it runs. Where it does not (the server's `autovacuum` is off,
or the table's `autovacuum_enabled`), this thread vacuums those two tables, and only those, once
their dead rows pass `min_dead + scale * live`, as autovacuum would (with its own, smaller, figures).
Replicas may each run one: `SKIP_LOCKED` makes a second VACUUM of the same table skip it.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import psycopg

from chatledger.store.threads import lower_this_threads_priority

log = logging.getLogger("chatledger.store")

# Tables autovacuum would vacuum but will not, that the gateway's user owns (VACUUM of another's
# table only warns), with their live and dead row counts from the statistics.
STATE = """
SELECT c.relname, s.n_live_tup, s.n_dead_tup FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid IN (to_regclass('sessions'), to_regclass('search_pending'))
  AND pg_has_role(c.relowner, 'USAGE')
  AND NOT (current_setting('autovacuum')::bool AND current_setting('track_counts')::bool
           AND COALESCE((SELECT option_value::bool FROM pg_options_to_table(c.reloptions)
                         WHERE option_name = 'autovacuum_enabled'), true))
"""


class Vacuumer:
    def __init__(self, conninfo: str, *, interval: float = 1.0, min_dead: int = 1000, scale: float = 1.0,
                 idle_interval: float = 60.0) -> None:
        self._conninfo = conninfo
        self._interval = interval
        # Where autovacuum looks after both tables, only a look now and then (and no connection kept).
        self._idle_interval = idle_interval
        self._min_dead = min_dead
        self._scale = scale
        self._connection: psycopg.Connection | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self.vacuums = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chatledger-vacuum", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close()

    def vacuum_due(self) -> list[str] | None:
        """Vacuum the tables whose dead rows are past the threshold; returns their names, or None when
        autovacuum looks after both tables."""
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5,
                                               application_name="chatledger-vacuum")
        tables = self._connection.execute(STATE).fetchall()
        if not tables:
            self._close()
            return None
        due = [name for name, live, dead in tables if dead > self._min_dead + self._scale * live]
        for name in due:
            self._connection.execute(f"VACUUM (SKIP_LOCKED) {name}")
            self.vacuums += 1
        return due

    def _run(self) -> None:
        lower_this_threads_priority(19)  # the waiting is this thread's; the work is the server's
        interval = self._interval
        while not self._stopping.wait(interval):
            try:
                interval = self._interval if self.vacuum_due() is not None else self._idle_interval
                self._last_error = None
            except psycopg.Error as exc:
                if str(exc) != self._last_error:  # once per cause: the store's own errors are logged elsewhere
                    log.warning("vacuum of the recorder's tables failed: %s", exc)
                self._last_error = str(exc)
                self._close()

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None
