"""The `settings` table: small key/value state shared by every replica (the active provider)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from chatledger.store.schema import settings

ACTIVE_PROVIDER = "active_provider"


def get_setting(engine: sa.Engine, key: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()


def set_setting(engine: sa.Engine, key: str, value: str | None) -> None:
    now = int(time.time() * 1000)
    with engine.begin() as connection:
        if value is None:
            connection.execute(sa.delete(settings).where(settings.c.key == key))
            return
        updated = connection.execute(sa.update(settings).where(settings.c.key == key)
                                     .values(value=value, updated_at=now)).rowcount
        if not updated:
            connection.execute(sa.insert(settings).values(key=key, value=value, updated_at=now))
