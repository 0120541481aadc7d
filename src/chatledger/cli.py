"""The `chatledger` command: a thin shell over functions that tests can call directly."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from chatledger.commands.db import db
from chatledger.commands.export import export
from chatledger.commands.legacy import import_
from chatledger.commands.report import report
from chatledger.config import ConfigError, Settings, load_gateway_config


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@click.group()
@click.version_option(package_name="chatledger")
def main() -> None:
    """chatledger: an OpenAI-compatible LLM gateway that records every exchange."""


@main.command()
@click.option("--host", default=None, help="Interface to bind (HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (PORT, default 3000).")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Providers/models YAML file (CHATLEDGER_CONFIG).")
@click.option("--database", "database_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file (DATABASE_PATH, default ./data/chatledger.db).")
@click.option("--access-log/--no-access-log", default=False, help="Log every request line.")
@click.option("--proxy-headers/--no-proxy-headers", default=False,
              help="Trust X-Forwarded-For from --forwarded-allow-ips (behind a reverse proxy).")
@click.option("--forwarded-allow-ips", default="127.0.0.1", show_default=True)
def serve(host: str | None, port: int | None, workers: int, config_path: Path | None,
          database_path: Path | None, access_log: bool, proxy_headers: bool, forwarded_allow_ips: str) -> None:
    """Start the gateway."""
    import uvicorn

    from chatledger.banner import banner_lines
    from chatledger.store import Store
    from chatledger.store.counts import schema_version, table_counts
    from chatledger.store.settings_store import ACTIVE_PROVIDER, get_setting

    settings = _settings(host=host, port=port, chatledger_config=config_path, database_path=database_path)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the banner says what the migrations did
    try:
        config = load_gateway_config(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    location = version = counts = None
    active = config.active_provider
    if settings.enable_persistence:
        try:
            store = Store.open(database_path=settings.database_path, database_url=settings.database_url,
                               session_timeout_ms=settings.session_timeout)
        except Exception as exc:
            raise click.ClickException(f"cannot open the store: {exc}") from exc
        location = store.location if settings.database_url else str(settings.database_path.resolve())
        version, counts = schema_version(store.engine), table_counts(store.engine)
        stored_active = get_setting(store.engine, ACTIVE_PROVIDER)
        if stored_active in config.providers:
            active = stored_active
        store.close()
    for line in banner_lines(settings, config, location=location, schema_version=version, counts=counts,
                             active_provider=active, workers=workers):
        click.echo(line)
    sys.stdout.flush()
    options = dict(host=settings.host, port=settings.port, loop="uvloop", http="httptools", lifespan="on",
                   access_log=access_log, log_level=settings.log_level.lower(), timeout_graceful_shutdown=30,
                   proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips)
    if workers > 1:
        # Workers build their own app from the environment: hand the command-line choices down.
        os.environ.update({"HOST": settings.host, "PORT": str(settings.port),
                           "DATABASE_PATH": str(settings.database_path)})
        if settings.chatledger_config:
            os.environ["CHATLEDGER_CONFIG"] = str(settings.chatledger_config)
        uvicorn.run("chatledger.gateway.app:create_app", factory=True, workers=workers, **options)
    else:
        from chatledger.gateway.app import ChatLedgerApp

        uvicorn.run(ChatLedgerApp(settings, config), **options)


@main.group()
def provider() -> None:
    """Inspect and switch providers."""


@provider.command("use")
@click.argument("name")
def provider_use(name: str) -> None:
    """Make NAME the active provider (running gateways follow within seconds)."""
    from chatledger.store import Store
    from chatledger.store.settings_store import ACTIVE_PROVIDER, set_setting

    settings = _settings()
    config = load_gateway_config(settings)
    if name not in config.providers:
        raise click.ClickException(f"unknown provider {name!r}; configured: {', '.join(sorted(config.providers))}")
    store = Store.open(database_path=settings.database_path, database_url=settings.database_url,
                       session_timeout_ms=settings.session_timeout)
    set_setting(store.engine, ACTIVE_PROVIDER, name)
    store.close()
    click.echo(f"active provider: {name}")


@provider.command("list")
def provider_list() -> None:
    """List the configured providers."""
    settings = _settings()
    config = load_gateway_config(settings)
    for name, item in config.providers.items():
        mark = " (active by default)" if name == config.active_provider else ""
        click.echo(f"{name}\t{item.type}\t{item.base_url or '-'}{mark}")


main.add_command(db)
main.add_command(export)
main.add_command(report)
main.add_command(import_)
