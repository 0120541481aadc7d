"""`db check`, `db vacuum` and `db stats`: health, compaction and the figures of the store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chatledger.ops.errors import DatabaseCorrupt
from chatledger.ops.sqlite import STORE_TABLES, as_error, connect, file_sizes, open_store, tables, translated

PROGRESS_EVERY_INSTRUCTIONS = 20_000


@dataclass(frozen=True)
class CheckResult:
    path: Path
    integrity: list[str]
    foreign_keys: list[str]
    missing_tables: list[str]

    @property
    def ok(self) -> bool:
        return not (self.integrity or self.foreign_keys or self.missing_tables)


def check(path: Path, *, busy_timeout_ms: int = 5000, max_errors: int = 100) -> CheckResult:
    connection = connect(path, busy_timeout_ms=busy_timeout_ms)
    try:
        try:
            rows = [row[0] for row in connection.execute(f"PRAGMA integrity_check({int(max_errors)})")]
            integrity = [] if rows == ["ok"] else rows
            foreign_keys = [f"{table} row {rowid} references a missing {parent} row"
                            for table, rowid, parent, _ in connection.execute("PRAGMA foreign_key_check")]
            missing = [name for name in STORE_TABLES if name not in tables(connection)]
        except sqlite3.DatabaseError as exc:
            error = as_error(exc, path)
            if not isinstance(error, DatabaseCorrupt):
                raise error from exc
            return CheckResult(path, [str(exc)], [], [])
    finally:
        connection.close()
    return CheckResult(path, integrity, foreign_keys, missing)


@dataclass(frozen=True)
class VacuumResult:
    path: Path
    before: int
    after: int


def vacuum(path: Path, *, busy_timeout_ms: int = 5000, on_progress: Callable[[], None] | None = None) -> VacuumResult:
    """Rebuild the file without its free pages; `on_progress` is called now and then while SQLite works."""
    connection = open_store(path, busy_timeout_ms=busy_timeout_ms)
    try:
        with translated(path):
            before = sum(file_sizes(path).values())
            if on_progress is not None:
                def tick() -> int:
                    on_progress()
                    return 0  # non-zero would abort the VACUUM

                connection.set_progress_handler(tick, PROGRESS_EVERY_INSTRUCTIONS)
            connection.execute("VACUUM")
            connection.set_progress_handler(None, 0)
            # In WAL mode the rebuilt pages sit in the WAL until a checkpoint copies them back.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()
    return VacuumResult(path, before, sum(file_sizes(path).values()))


@dataclass(frozen=True)
class ModelFigures:
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Stats:
    path: Path
    sizes: dict[str, int]
    counts: dict[str, int]
    oldest_ms: int | None
    newest_ms: int | None
    page_size: int
    page_count: int
    freelist_count: int
    models: list[ModelFigures] = field(default_factory=list)


PER_MODEL = """
SELECT r.model, COUNT(*), SUM(s.error IS NOT NULL), COALESCE(SUM(s.prompt_tokens), 0),
       COALESCE(SUM(s.completion_tokens), 0),
       COALESCE(SUM(COALESCE(s.total_tokens, COALESCE(s.prompt_tokens, 0) + COALESCE(s.completion_tokens, 0))), 0)
FROM requests r LEFT JOIN responses s ON s.request_id = r.id
GROUP BY r.model ORDER BY COUNT(*) DESC, r.model
"""


def stats(path: Path, *, busy_timeout_ms: int = 5000) -> Stats:
    connection = open_store(path, busy_timeout_ms=busy_timeout_ms)
    try:
        with translated(path):
            connection.execute("BEGIN")  # one snapshot for every figure
            counts = {table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                      for table in STORE_TABLES}
            oldest, newest = connection.execute("SELECT MIN(timestamp), MAX(timestamp) FROM requests").fetchone()
            pragmas = [connection.execute(f"PRAGMA {name}").fetchone()[0]
                       for name in ("page_size", "page_count", "freelist_count")]
            models = [ModelFigures(row[0], row[1], row[2] or 0, row[3], row[4], row[5])
                      for row in connection.execute(PER_MODEL)]
            connection.execute("COMMIT")
    finally:
        connection.close()
    return Stats(path, file_sizes(path), counts, oldest, newest, *pragmas, models=models)
