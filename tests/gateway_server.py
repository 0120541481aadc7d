"""Start the real gateway for tests: in a thread (fast, inspectable) or as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn

from chatledger.config import GatewayConfig, Settings
from chatledger.gateway.app import ChatLedgerApp
from chatledger.store.engine import create_engine
from tests.fakes.server import free_port

PROVIDER_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL",
                      "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "CHATLEDGER_CONFIG", "DATABASE_PATH",
                      "DATABASE_URL", "CHATLEDGER_MASTER_KEY", "HOST", "PORT", "SESSION_TIMEOUT",
                      "ENABLE_PERSISTENCE", "ENABLE_CRUD_API")


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    values.setdefault("database_path", tmp_path / "data" / "chatledger.db")
    values.setdefault("port", free_port())
    values.setdefault("log_level", "warning")
    # The recorder thread unless a test asks: gateways start faster (the process has its own tests).
    values.setdefault("writer_process", False)
    return Settings(_env_file=None, **values)


class DatabaseMixin:
    """The gateway's database as the tests see it, SQLite or PostgreSQL alike: SQL through SQLAlchemy's
    text() with :named parameters (or `?` placeholders, filled in order from positional arguments)."""

    db_path: Path
    database_url: str | None = None
    _engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(self.db_path, self.database_url)
        return self._engine

    @staticmethod
    def _statement(sql: str, args: tuple[Any, ...], params: dict[str, Any]) -> tuple[sa.TextClause, dict[str, Any]]:
        if args:
            parts = sql.split("?")
            assert len(parts) == len(args) + 1, "one positional argument per `?`"
            sql = parts[0] + "".join(f":_p{i}{part}" for i, part in enumerate(parts[1:]))
            params = {**params, **{f"_p{i}": value for i, value in enumerate(args)}}
        return sa.text(sql), params

    def rows(self, sql: str, *args: Any, **params: Any) -> list[dict[str, Any]]:
        statement, values = self._statement(sql, args, params)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(statement, values).mappings()]

    def execute(self, sql: str, *args: Any, **params: Any) -> int:
        """A write, committed; returns the rows it touched."""
        statement, values = self._statement(sql, args, params)
        with self.engine.begin() as connection:
            return connection.execute(statement, values).rowcount

    def count(self, table: str) -> int:
        return self.rows(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class GatewayThread(DatabaseMixin):
    def __init__(self, settings: Settings, config: GatewayConfig | None = None) -> None:
        self.settings = settings
        self.app = ChatLedgerApp(settings, config)
        self.url = f"http://127.0.0.1:{settings.port}"
        self.db_path = settings.database_path
        self.database_url = settings.database_url
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=settings.port, loop="uvloop",
                                                    http="httptools", lifespan="on", log_level="warning"))
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self.dispose()

    def settle(self) -> None:
        """Answers go out before their rows are committed: wait for the recorder to have caught up."""
        writer = self.app.writer
        if writer is not None and self._thread.is_alive():
            writer.settle()

    def rows(self, sql: str, *args: Any, **params: Any) -> list[dict[str, Any]]:
        self.settle()
        return super().rows(sql, *args, **params)

    def execute(self, sql: str, *args: Any, **params: Any) -> int:
        self.settle()
        return super().execute(sql, *args, **params)


class GatewayProcess(DatabaseMixin):
    """`python -m chatledger serve` in its own process, for crash and shutdown tests."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.db_path = workdir / "data" / "chatledger.db"
        self.env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES}
        self.env.update({"PORT": str(self.port), "LOG_LEVEL": "warning", **env})
        self.database_url = self.env.get("DATABASE_URL")
        self.process: subprocess.Popen[bytes] | None = None
        self.output = b""

    def start(self) -> GatewayProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "chatledger", "serve"], cwd=self.workdir,
                                        env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gateway exited: " + self.process.stdout.read().decode())  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not answer /health")

    def stop(self, signal_number: int | None = None, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            if signal_number is None:
                self.process.terminate()
            else:
                self.process.send_signal(signal_number)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.output += out or b""
        self.dispose()
        return self.process.returncode
