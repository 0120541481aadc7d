"""Opening the store's SQLite file for maintenance: never creating it, and turning SQLite's errors into ours."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from chatledger.ops.errors import (
    DatabaseCorrupt,
    DatabaseLocked,
    DatabaseMissing,
    NotAChatledgerDatabase,
    NotADatabase,
    OpsError,
)

STORE_TABLES = ("sessions", "requests", "responses")
LEGACY_TABLE = "request_logs"


def as_error(exc: sqlite3.Error, path: Path) -> OpsError:
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return DatabaseLocked(path)
    if name == "SQLITE_NOTADB" or "not a database" in text:
        return NotADatabase(path)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return DatabaseCorrupt(path, text)
    if name.startswith("SQLITE_CANTOPEN"):
        return OpsError(f"cannot open database {path}: {text}")
    return OpsError(f"database {path}: {text}")


@contextmanager
def translated(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise as_error(exc, path) from exc


def file_uri(path: Path, mode: str, *, immutable: bool = False) -> str:
    return f"file:{quote(str(path.resolve()))}?mode={mode}" + ("&immutable=1" if immutable else "")


def connect(path: Path, *, busy_timeout_ms: int = 5000, readonly: bool = False,
            immutable: bool = False) -> sqlite3.Connection:
    """An autocommit connection to an existing file, checked to be a readable SQLite database.
    `immutable`: read-only without even the `-shm` file a WAL database would otherwise get."""
    if not path.is_file():
        raise DatabaseMissing(path)
    mode = "ro" if readonly or immutable else "rw"
    with translated(path):
        connection = sqlite3.connect(file_uri(path, mode, immutable=immutable), uri=True, isolation_level=None,
                                     timeout=busy_timeout_ms / 1000, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            connection.close()
            raise
    return connection


def lock_exclusive(path: Path, *, busy_timeout_ms: int) -> sqlite3.Connection | None:
    """A connection holding the database's exclusive lock until it is closed, proving no one else has
    the file open: in WAL mode every open connection keeps a shared lock, so an idle gateway counts.
    Raises DatabaseLocked if someone does; returns None when the file is not a database at all."""
    try:
        connection = connect(path, busy_timeout_ms=busy_timeout_ms)
    except (NotADatabase, DatabaseCorrupt):
        return None
    try:
        with translated(path):
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
            connection.execute("BEGIN EXCLUSIVE")
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            connection.execute("ROLLBACK")  # the lock stays: locking_mode=EXCLUSIVE keeps it
    except (NotADatabase, DatabaseCorrupt):
        connection.close()
        return None
    except OpsError:
        connection.close()
        raise
    return connection


def tables(connection: sqlite3.Connection) -> set[str]:
    return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def require_store(connection: sqlite3.Connection, path: Path) -> None:
    present = tables(connection)
    if LEGACY_TABLE in present and "requests" not in present:
        raise NotAChatledgerDatabase(f"{path} is a legacy database (request_logs); "
                                     "import it with `chatledger import legacy`")
    missing = [name for name in STORE_TABLES if name not in present]
    if missing:
        raise NotAChatledgerDatabase(f"{path} is not a chatledger database (no {', '.join(missing)} table)")


def open_store(path: Path, *, busy_timeout_ms: int = 5000, readonly: bool = False) -> sqlite3.Connection:
    connection = connect(path, busy_timeout_ms=busy_timeout_ms, readonly=readonly)
    try:
        with translated(path):
            require_store(connection, path)
    except OpsError:
        connection.close()
        raise
    connection.row_factory = sqlite3.Row
    return connection


def companion(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk of the database and its `-wal` and `-shm` files (0 when absent)."""
    sizes = {}
    for label, file in (("db", path), ("wal", companion(path, "-wal")), ("shm", companion(path, "-shm"))):
        try:
            sizes[label] = file.stat().st_size
        except FileNotFoundError:
            sizes[label] = 0
    return sizes


def integrity_problems(connection: sqlite3.Connection, *, max_errors: int = 100) -> list[str]:
    rows = [row[0] for row in connection.execute(f"PRAGMA integrity_check({int(max_errors)})")]
    return [] if rows == ["ok"] else rows
