"""Read-side figures the gateway itself needs (the start-up banner, /health)."""

from __future__ import annotations

import sqlalchemy as sa

from chatledger.store.schema import meta


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {table: connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
                for table in ("sessions", "requests", "responses")}


def schema_version(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return connection.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
