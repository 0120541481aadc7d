"""PostgreSQL for the tests: one fresh database per test run, one fresh schema per test.

The server is the one at CHATLEDGER_TEST_POSTGRES_URL (default: 127.0.0.1:5432, user postgres, trust
auth, database test); the run creates `chatledger_test_<hex>` there and drops it at the end, so
concurrent runs never meet. Without a reachable server the PostgreSQL tests skip, unless
CHATLEDGER_TEST_POSTGRES=1 (CI) makes them mandatory: then they fail, loudly.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

SERVER_URL = os.environ.get("CHATLEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


def postgres_required() -> bool:
    return os.environ.get("CHATLEDGER_TEST_POSTGRES") == "1"


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def schema_url(database_url: str, schema: str) -> str:
    """A URL whose connections work in `schema` (libpq `options`, which SQLAlchemy and psycopg both pass on)."""
    return f"{database_url}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """This run's own database (dropped at the end); its URL, `postgresql://...`."""
    try:
        admin = psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if postgres_required():
            pytest.fail(f"CHATLEDGER_TEST_POSTGRES=1 but PostgreSQL is not reachable at {SERVER_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {SERVER_URL} (set CHATLEDGER_TEST_POSTGRES=1 to require it)")
    name = f"chatledger_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield _with_database(SERVER_URL, name)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A fresh, empty schema in the run's database, for one test."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return schema_url(postgres_database, schema)


@pytest.fixture(params=BACKENDS)
def any_store_url(request: pytest.FixtureRequest) -> str | None:
    """None (the default SQLite file) or a PostgreSQL URL: a module runs its tests on both by naming
    this fixture `store_url` (`store_url = any_store_url`)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")
