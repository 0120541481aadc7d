"""`db migrate` and `db status`: where the schema is, where it should be, and getting it there."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from chatledger.ops.errors import NotAChatledgerDatabase
from chatledger.ops.sqlite import LEGACY_TABLE, as_error, connect, file_sizes, tables, translated
from chatledger.store import Store, migrate
from chatledger.store.rollups import rebuild_statements


@dataclass(frozen=True)
class Status:
    path: Path
    current: str | None
    head: str
    schema_version: str | None
    journal_mode: str
    sizes: dict[str, int]

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True)
class Migration:
    path: Path
    before: str | None
    after: str | None
    created: bool
    rollups_rebuilt: bool = False


def known_revisions() -> set[str]:
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def status(path: Path, *, busy_timeout_ms: int = 5000) -> Status:
    connection = connect(path, busy_timeout_ms=busy_timeout_ms, readonly=True)
    try:
        with translated(path):
            present = tables(connection)
            current = schema_version = None
            if "alembic_version" in present:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                current = row[0] if row else None
            if "metadata" in present:
                row = connection.execute("SELECT value FROM metadata WHERE key = 'schema_version'").fetchone()
                schema_version = row[0] if row else None
            journal_mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()
    return Status(path, current, migrate.head_revision(), schema_version, journal_mode.upper(), file_sizes(path))


def upgrade(path: Path, *, session_timeout_ms: int, busy_timeout_ms: int = 5000) -> Migration:
    """Apply the pending migrations, creating the database if needed (as `serve` would)."""
    created = not path.exists()
    before = None
    if not created:
        connection = connect(path, busy_timeout_ms=busy_timeout_ms)
        try:
            with translated(path):
                present = tables(connection)
                if LEGACY_TABLE in present and "requests" not in present:
                    raise NotAChatledgerDatabase(
                        f"{path} is a legacy database (request_logs); import it into a new file with "
                        "`chatledger import legacy`")
                if "alembic_version" in present:
                    row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
                    before = row[0] if row else None
        finally:
            connection.close()
    try:
        store = Store.open(database_path=path, session_timeout_ms=session_timeout_ms,
                           busy_timeout_ms=busy_timeout_ms)
        try:
            after = migrate.current_revision(store.engine)
        finally:
            store.close()
    except sa.exc.DBAPIError as exc:
        if isinstance(exc.orig, sqlite3.Error):
            raise as_error(exc.orig, path) from exc
        raise
    rebuilt = not created and before != after and rebuild_rollups(path, busy_timeout_ms=busy_timeout_ms)
    return Migration(path, before, after, created, rebuilt)


def rebuild_rollups(path: Path, *, busy_timeout_ms: int = 5000) -> bool:
    """Recompute the hourly usage rollups from the rows, for a store whose rows were not all written by
    the recorder (one migrated from before the rollups existed, a restored old backup)."""
    connection = connect(path, busy_timeout_ms=busy_timeout_ms)
    try:
        with translated(path):
            if "usage_hourly" not in tables(connection):
                return False
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in rebuild_statements():
                    connection.execute(statement)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
    finally:
        connection.close()
    return True
