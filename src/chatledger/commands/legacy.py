"""`chatledger import legacy DB`: bring a legacy `request_logs` database into the store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from chatledger.commands import database_option, friendly_errors, settings_for
from chatledger.config import ConfigError, load_gateway_config
from chatledger.ops import legacy as importer
from chatledger.pricing import Pricer


@click.group("import")
def import_() -> None:
    """Import data from elsewhere into the store."""


@import_.command()
@click.argument("legacy_path", metavar="DB", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group-sessions", is_flag=True,
              help="One session per first user message (split after SESSION_TIMEOUT of inactivity) "
                   "instead of one synthetic session per legacy row.")
@click.option("--chunk-size", type=click.IntRange(min=1, max=10_000), default=importer.CHUNK_ROWS, show_default=True,
              help="Rows per transaction.")
@database_option
@friendly_errors
def legacy(legacy_path: Path, group_sessions: bool, chunk_size: int, database_path: Path | None) -> None:
    """Import the request_logs table of the legacy database DB (left untouched); safe to run twice."""
    settings = settings_for(database_path)
    timeout = settings.sqlite_busy_timeout_ms
    try:
        pricer = Pricer(load_gateway_config(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    total = importer.count_legacy_rows(legacy_path, busy_timeout_ms=timeout)
    with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
        result = importer.import_legacy(legacy_path, settings.database_path,
                                        session_timeout_ms=settings.session_timeout, group_sessions=group_sessions,
                                        pricer=pricer, chunk_rows=chunk_size, busy_timeout_ms=timeout,
                                        on_progress=bar.update)
    click.echo(f"read {result.read}, imported {result.imported}, skipped {result.skipped} (already present)")
    if result.renamed:
        click.echo(f"{result.renamed} rows repeated an earlier request_id: imported as <request_id>-legacy-<id>")
    if result.unparsed:
        click.echo(f"{result.unparsed} request bodies were not JSON: imported as stored")
    if result.imported and not result.indexed:
        click.echo("the database was in use: imported rows are not in the search index "
                   "(run the import with the gateway stopped to index them)")
    if result.unmapped_columns:
        click.echo(f"legacy columns not carried over: {', '.join(result.unmapped_columns)}")
