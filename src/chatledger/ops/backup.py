"""Online backups with SQLite's backup API, and restoring one over the store.

A backup is one consistent snapshot taken in a single read transaction: in WAL mode the gateway keeps
writing meanwhile. The copy is written beside its destination, checked, switched to rollback-journal
mode (one self-contained file), and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from chatledger.ops.errors import DatabaseCorrupt, DatabaseLocked, NotAChatledgerDatabase, OpsError, Refused
from chatledger.ops.revisions import Migration, known_revisions, status, upgrade
from chatledger.ops.sqlite import (
    companion,
    connect,
    integrity_problems,
    lock_exclusive,
    open_store,
    tables,
    translated,
)
from chatledger.store.migrate import head_revision


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    requests: int
    seconds: float


def backup_destination(destination: Path) -> Path:
    """A directory gets a timestamped file name inside it."""
    if destination.is_dir():
        return destination / time.strftime("chatledger-%Y%m%d-%H%M%S.db")
    return destination


def copy_database(source: sqlite3.Connection, destination: Path, label: Path) -> None:
    """Snapshot `source` into `destination` (replaced), as one file in rollback-journal mode, checked."""
    partial = companion(destination, ".partial")
    partial.unlink(missing_ok=True)
    target = sqlite3.connect(partial, isolation_level=None)
    try:
        with translated(label):
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            problems = integrity_problems(target)
        if problems:
            raise DatabaseCorrupt(label, "the copy fails integrity_check: " + "; ".join(problems[:5]))
    except BaseException:
        target.close()
        partial.unlink(missing_ok=True)
        raise
    target.close()
    partial.replace(destination)


def backup(database: Path, destination: Path, *, overwrite: bool = False,
           busy_timeout_ms: int = 5000) -> BackupResult:
    started = time.monotonic()
    destination = backup_destination(destination)
    if destination.resolve() == database.resolve():
        raise Refused("the backup cannot be the database itself")
    if destination.exists() and not overwrite:
        raise Refused(f"{destination} already exists (use --force to replace it)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    source = open_store(database, busy_timeout_ms=busy_timeout_ms)
    try:
        copy_database(source, destination, database)
    finally:
        source.close()
    check = sqlite3.connect(destination)
    try:
        requests = check.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    finally:
        check.close()
    return BackupResult(destination, destination.stat().st_size, requests, time.monotonic() - started)


@dataclass(frozen=True)
class RestoreResult:
    path: Path
    source: Path
    previous: Path | None
    requests: int
    migration: Migration | None = None  # an older backup brought to the current schema


def validate_backup(source: Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open a would-be backup read-only, refusing anything that is not a sound chatledger database."""
    connection = open_store(source, busy_timeout_ms=busy_timeout_ms, readonly=True)
    try:
        with translated(source):
            problems = integrity_problems(connection)
            if problems:
                raise DatabaseCorrupt(source, "; ".join(problems[:5]))
            row = None
            if "alembic_version" in tables(connection):
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            if row is not None and row[0] not in known_revisions():
                raise NotAChatledgerDatabase(f"{source} has schema revision {row[0]}, unknown to this chatledger "
                                             "(made by a newer version?)")
    except OpsError:
        connection.close()
        raise
    return connection


def keep_previous(database: Path, holder: sqlite3.Connection | None) -> Path:
    """Save the current database as `<db>.before-restore`: a consistent copy, or the raw bytes if damaged."""
    previous = companion(database, ".before-restore")
    if holder is not None:
        with contextlib.suppress(OpsError):
            copy_database(holder, previous, database)
            return previous
    shutil.copyfile(database, previous)
    wal = companion(database, "-wal")
    if wal.exists():
        shutil.copyfile(wal, companion(previous, "-wal"))
    return previous


def restore(database: Path, source: Path, *, session_timeout_ms: int, force: bool = False,
            busy_timeout_ms: int = 5000) -> RestoreResult:
    if source.resolve() == database.resolve():
        raise Refused("the backup to restore is the database itself")
    backup_connection = validate_backup(source, busy_timeout_ms=busy_timeout_ms)
    try:
        incoming = companion(database, ".restoring")
        database.parent.mkdir(parents=True, exist_ok=True)
        copy_database(backup_connection, incoming, source)
        requests = backup_connection.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    finally:
        backup_connection.close()
    try:
        previous = swap_in(database, incoming, force=force, busy_timeout_ms=busy_timeout_ms)
    finally:
        incoming.unlink(missing_ok=True)
    migration = None
    if status(database, busy_timeout_ms=busy_timeout_ms).current != head_revision():
        migration = upgrade(database, session_timeout_ms=session_timeout_ms, busy_timeout_ms=busy_timeout_ms)
    return RestoreResult(database, source, previous, requests, migration)


def swap_in(database: Path, incoming: Path, *, force: bool, busy_timeout_ms: int) -> Path | None:
    if not database.exists():
        for suffix in ("-wal", "-shm"):
            companion(database, suffix).unlink(missing_ok=True)
        incoming.replace(database)
        return None
    holder = None
    if force:
        with contextlib.suppress(OpsError):
            holder = connect(database, busy_timeout_ms=busy_timeout_ms)
    else:
        try:
            holder = lock_exclusive(database, busy_timeout_ms=min(busy_timeout_ms, 1000))
        except DatabaseLocked as exc:
            raise Refused(f"{database} is in use (is the gateway running?); stop it first or use --force") \
                from exc
    try:
        previous = keep_previous(database, holder)
    finally:
        if holder is not None:
            holder.close()
    # The old WAL belongs to the old file: replayed into the new one it would corrupt it.
    for suffix in ("-wal", "-shm"):
        companion(database, suffix).unlink(missing_ok=True)
    incoming.replace(database)
    return previous
