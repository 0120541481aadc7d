from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.fakes import openai_server
from tests.fakes.server import ServerThread
from tests.gateway_server import PROVIDER_VARIABLES, GatewayThread, make_settings
from tests.postgres import any_store_url, postgres_database, postgres_url  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own keys and settings must never reach a test."""
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def openai_upstream() -> Iterator[ServerThread]:
    with ServerThread(openai_server.create_app()) as server:
        yield server


@pytest.fixture
def upstream_requests(openai_upstream: ServerThread) -> list[dict[str, Any]]:
    log = openai_upstream.app[openai_server.REQUESTS]
    log.clear()
    return log


@pytest.fixture
def store_url() -> str | None:
    """The store the gateways of a test record into: None for the SQLite file under tmp_path. A module
    that runs on both backends overrides it: `store_url = any_store_url` (tests/postgres.py)."""
    return None


@pytest.fixture
def writer_ack() -> str:
    """WRITER_ACK for the gateways of a test; tests about it parametrize this name."""
    return "auto"


@pytest.fixture
def make_gateway(tmp_path: Path, store_url: str | None, writer_ack: str) -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def start(**values: Any) -> GatewayThread:
        if store_url is not None:
            values.setdefault("database_url", store_url)
        values.setdefault("writer_ack", writer_ack)
        gateway = GatewayThread(make_settings(tmp_path, **values)).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayThread], openai_upstream: ServerThread) -> GatewayThread:
    """A gateway whose active provider is the fake OpenAI upstream (as with OPENAI_BASE_URL set)."""
    return make_gateway(openai_base_url=openai_upstream.url + "/v1", openai_api_key="sk-upstream-secret")


def client_for(gateway: GatewayThread, api_key: str = "sk-client-one", **kwargs: Any) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, **kwargs)


@pytest.fixture
def client(gateway: GatewayThread) -> OpenAI:
    return client_for(gateway)
