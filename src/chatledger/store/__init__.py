"""The store: where exchanges are recorded (SQLite by default, PostgreSQL through DATABASE_URL) and read back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from chatledger.pricing import Pricer
from chatledger.store import migrate
from chatledger.store.engine import create_engine, psycopg_conninfo
from chatledger.store.search_index import SQLiteSearchIndex, search_path
from chatledger.store.search_indexer import SearchBackend
from chatledger.store.sqlite_sink import SQLiteSink
from chatledger.store.writer import Sink


@dataclass
class Store:
    engine: sa.Engine
    location: str
    database_path: Path | None
    session_timeout_ms: int
    synchronous: str
    busy_timeout_ms: int = 5000

    @classmethod
    def open(cls, *, database_path: Path, database_url: str | None = None, session_timeout_ms: int,
             synchronous: str = "NORMAL", busy_timeout_ms: int = 5000, run_migrations: bool = True) -> Store:
        engine = create_engine(database_path, database_url)
        if run_migrations and migrate.current_revision(engine) != migrate.head_revision():
            migrate.upgrade(engine)
        location = engine.url.render_as_string(hide_password=True) if database_url else str(database_path)
        return cls(engine, location, None if database_url else database_path, session_timeout_ms, synchronous,
                   busy_timeout_ms)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def sink(self, pricer: Pricer | None = None, *, connections: int = 2) -> Sink:
        """The recorder's way in; `connections`: how many PostgreSQL connections it writes on at once."""
        if self.dialect == "postgresql":
            # Imported here: psycopg costs ~20 MB of memory, in the gateway and its recorder process,
            # which a SQLite store never needs.
            from chatledger.store.postgres_sink import PostgresSink

            conninfo = psycopg_conninfo(self.engine.url.render_as_string(hide_password=False))
            return PostgresSink(conninfo, session_timeout_ms=self.session_timeout_ms, pricer=pricer,
                                connections=connections)
        if self.database_path is None:
            raise NotImplementedError(f"recording into {self.dialect} is not supported")
        return SQLiteSink(self.database_path, session_timeout_ms=self.session_timeout_ms,
                          synchronous=self.synchronous, busy_timeout_ms=self.busy_timeout_ms, pricer=pricer)

    def search_backend(self) -> SearchBackend | None:
        """What the background search indexer fills: the index file beside a SQLite ledger, or on
        PostgreSQL the search table, from the queue the recorder fills (every replica indexes)."""
        if self.dialect == "postgresql":
            from chatledger.store.search_pg import PostgresSearchIndex  # as in `sink`

            return PostgresSearchIndex(psycopg_conninfo(self.engine.url.render_as_string(hide_password=False)))
        if self.database_path is None:
            return None
        return SQLiteSearchIndex(self.database_path, synchronous=self.synchronous,
                                 busy_timeout_ms=self.busy_timeout_ms)

    def search_path(self) -> Path | None:
        return search_path(self.database_path) if self.database_path is not None else None

    def dead_letter_path(self) -> Path | None:
        if self.database_path is None:
            return None
        return self.database_path.with_name(self.database_path.name + ".deadletter.jsonl")

    def close(self) -> None:
        self.engine.dispose()
