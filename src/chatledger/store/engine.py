"""Engines for the store: a SQLite file (the default) with WAL and foreign keys on every connection,
or PostgreSQL through psycopg 3 when DATABASE_URL says so."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

SQLITE_BUSY_TIMEOUT_MS = 5000


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def configure_sqlite_connection(connection: sqlite3.Connection, synchronous: str = "NORMAL",
                                busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
    """The pragmas every connection to the store gets, from the writer's and the readers' alike."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    connection.execute(f"PRAGMA synchronous={synchronous}")


def normalize_url(database_url: str) -> str:
    """`postgresql://` and `postgres://` mean PostgreSQL through psycopg 3 (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    return database_url


def psycopg_conninfo(database_url: str) -> str:
    """The libpq form of a store URL, for connections made without SQLAlchemy (the recorder's)."""
    url = sa.make_url(normalize_url(database_url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def create_engine(database_path: Path | None = None, database_url: str | None = None) -> sa.Engine:
    if database_url:
        url = normalize_url(database_url)
        if url.startswith("postgresql"):
            # The read side: a small pool per replica (the recorder has its own connection).
            return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        return sa.create_engine(url, pool_pre_ping=True)
    assert database_path is not None
    database_path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(sqlite_url(database_path))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (for Alembic).
        dbapi_connection.isolation_level = None
        configure_sqlite_connection(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine
