"""Configuration: one `Settings` object from the environment (and `.env`), plus the provider/model file.

Settings are read once at start-up and passed down; nothing below this module reads `os.environ`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderType = Literal["openai", "dashscope", "anthropic", "mock"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "dashscope": "https://dashscope.aliyuncs.com",
    "anthropic": "https://api.anthropic.com",
    "mock": "",
}


class Settings(BaseSettings):
    """Environment configuration; the seeds' variable names are kept (DATABASE_PATH, SESSION_TIMEOUT...)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    host: str = "127.0.0.1"
    port: int = 3000
    database_path: Path = Path("data/chatledger.db")
    database_url: str | None = None
    # Milliseconds of inactivity after which a conversation starts a new session (seed 000).
    session_timeout: int = 30 * 60 * 1000
    enable_persistence: bool = True
    enable_crud_api: bool = True
    chatledger_config: Path | None = None
    chatledger_master_key: SecretStr | None = None
    max_body_size: int = 32 * 1024 * 1024
    log_level: str = "info"

    # The recorder: flush at `writer_batch_size` rows or `writer_flush_ms`, whichever comes first (rows
    # reach the database that long after their answer, at most, when nobody waits for the commit).
    writer_batch_size: int = 4096
    writer_flush_ms: int = 10
    # How long the end of a response may wait for its exchange to be committed.
    writer_ack_timeout_ms: int = 1000
    writer_max_pending_mb: int = 256
    # The recorder thread's nice value (Linux): under CPU contention the event loop comes first and
    # the recorder catches up in bigger batches. 0 treats them alike.
    writer_niceness: int = Field(default=10, ge=0, le=19)
    # The recorder's journal (per replica; default: `journal/` beside DATABASE_PATH): every record is
    # appended there first, so a crash loses nothing and a backlog past the memory budget waits there.
    writer_journal_dir: Path | None = None
    # When the end of an answer may go out: once its records are in the journal (`journal`), or once
    # they are committed to the database (`commit`). `auto`: journal, except for SQLite with
    # synchronous=FULL (a journal write is not fsynced) and PostgreSQL (a replica's local disk may
    # not outlive it).
    writer_ack: Literal["auto", "journal", "commit"] = "auto"
    # Run the recorder (the writer, the search indexer) in a process of its own, fed by the journal:
    # its Python no longer shares the event loop's GIL, so with a core to spare both run in parallel.
    # `auto`: a process when this one may run on two cores or more, else a thread of this process
    # (on one core the process costs a little more: docs/benchmarks.md).
    writer_process: bool | Literal["auto"] = "auto"
    # PostgreSQL: how many connections each replica's recorder writes a batch on at once (split by
    # conversation). One backend leaves a core mostly idle; two write about twice as fast.
    writer_pg_connections: int = Field(default=2, ge=1, le=16)
    # SQLite `synchronous`: NORMAL survives a process crash; FULL also survives power loss.
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    # How long the recorder waits for a lock held by another process before it retries later.
    sqlite_busy_timeout_ms: int = 5000

    # Upstream timeouts (seconds) applied to providers that do not set their own.
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    dashscope_api_key: SecretStr | None = None
    dashscope_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None

    def recorder_in_own_process(self) -> bool:
        if self.writer_process != "auto":
            return self.writer_process
        return len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) >= 2

    def recorder_ack(self) -> Literal["journal", "commit"]:
        if self.writer_ack != "auto":
            return self.writer_ack
        return "commit" if self.database_url or self.sqlite_synchronous == "FULL" else "journal"

    @field_validator("chatledger_master_key", "openai_api_key", "dashscope_api_key", "anthropic_api_key",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value


class Price(BaseModel):
    input_per_million: float = 0.0
    output_per_million: float = 0.0


class ProviderConfig(BaseModel):
    name: str
    type: ProviderType
    base_url: str = ""
    api_key: SecretStr | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class ModelRoute(BaseModel):
    name: str
    provider: str
    model: str | None = None  # the upstream's name; defaults to `name`
    aliases: list[str] = Field(default_factory=list)
    price: Price | None = None

    @property
    def upstream_model(self) -> str:
        return self.model or self.name


class GatewayConfig(BaseModel):
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelRoute]
    active_provider: str | None = None
    # Where the provider/model table came from, shown in the start-up banner.
    source: str = "environment"


class ConfigError(ValueError):
    pass


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, environ: dict[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; an unset variable without default becomes empty."""

    def replace(match: re.Match[str]) -> str:
        value = environ.get(match.group(1))
        if value is None or value == "":
            return match.group(2) or ""
        return value

    return _ENV_REFERENCE.sub(replace, text)


def _providers_from_environment(settings: Settings) -> list[ProviderConfig]:
    found: list[ProviderConfig] = []
    if settings.openai_api_key or settings.openai_base_url:
        found.append(ProviderConfig(name="openai", type="openai",
                                    base_url=settings.openai_base_url or DEFAULT_BASE_URLS["openai"],
                                    api_key=settings.openai_api_key))
    if settings.dashscope_api_key:
        found.append(ProviderConfig(name="dashscope", type="dashscope",
                                    base_url=settings.dashscope_base_url or DEFAULT_BASE_URLS["dashscope"],
                                    api_key=settings.dashscope_api_key))
    if settings.anthropic_api_key:
        found.append(ProviderConfig(name="anthropic", type="anthropic",
                                    base_url=settings.anthropic_base_url or DEFAULT_BASE_URLS["anthropic"],
                                    api_key=settings.anthropic_api_key))
    return found


def _parse_file(path: Path, environ: dict[str, str]) -> dict:
    try:
        raw = yaml.safe_load(interpolate(path.read_text(), environ)) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    return raw


def load_gateway_config(settings: Settings, environ: dict[str, str] | None = None) -> GatewayConfig:
    """Providers and models from the YAML file (if any), the standard provider variables, and `mock`."""
    environ = dict(os.environ) if environ is None else environ
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelRoute] = {}
    active: str | None = None
    strict = False
    source = "environment"

    path = settings.chatledger_config
    if path is None and Path("chatledger.yaml").is_file():
        path = Path("chatledger.yaml")
    if path is not None:
        raw = _parse_file(Path(path), environ)
        source = str(path)
        for name, body in (raw.get("providers") or {}).items():
            body = dict(body or {})
            body.setdefault("type", name if name in DEFAULT_BASE_URLS else "openai")
            body.setdefault("base_url", DEFAULT_BASE_URLS.get(body["type"], ""))
            if body.get("api_key") == "":
                body["api_key"] = None
            providers[name] = ProviderConfig(name=name, **body)
        for name, body in (raw.get("models") or {}).items():
            body = dict(body or {})
            models[name] = ModelRoute(name=name, **body)
        active = raw.get("active_provider")
        # `active_provider: null` in the file means "strict": unmapped model names are unknown.
        strict = "active_provider" in raw and active is None

    for provider in _providers_from_environment(settings):
        providers.setdefault(provider.name, provider)
    providers.setdefault("mock", ProviderConfig(name="mock", type="mock"))

    routes: dict[str, ModelRoute] = {}
    for route in models.values():
        if route.provider not in providers:
            raise ConfigError(f"model {route.name!r} names unknown provider {route.provider!r}")
        for name in (route.name, *route.aliases):
            if name in routes:
                raise ConfigError(f"model name {name!r} is mapped twice")
            routes[name] = route
    if active is not None and active not in providers:
        raise ConfigError(f"active_provider {active!r} is not a configured provider")
    if active is None and not strict:
        real = [p.name for p in providers.values() if p.type != "mock"]
        active = real[0] if real else "mock"
    return GatewayConfig(providers=providers, models=routes, active_provider=active, source=source)
