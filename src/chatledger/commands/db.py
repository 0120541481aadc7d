"""`chatledger db ...`: migrate, status, backup, restore, vacuum, check, stats."""

from __future__ import annotations

import os
from pathlib import Path

import click

from chatledger.commands import Spinner, database_option, friendly_errors, human_bytes, settings_for
from chatledger.ops import backup as backups
from chatledger.ops import maintenance, revisions
from chatledger.ops.timerange import format_ms


@click.group()
def db() -> None:
    """Maintain the SQLite store: migrations, backups, integrity, size."""


@db.command()
@database_option
@friendly_errors
def migrate(database_path: Path | None) -> None:
    """Apply pending schema migrations (creates the database if missing)."""
    settings = settings_for(database_path)
    result = revisions.upgrade(settings.database_path, session_timeout_ms=settings.session_timeout,
                               busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    if result.before == result.after:
        click.echo(f"{result.path}: already at revision {result.after}")
    else:
        origin = "new database" if result.created else f"revision {result.before or '(none)'}"
        click.echo(f"{result.path}: migrated from {origin} to revision {result.after}"
                   + ("; usage rollups rebuilt from the rows" if result.rollups_rebuilt else ""))


@db.command()
@database_option
@friendly_errors
def status(database_path: Path | None) -> None:
    """Schema revision (current and head), schema_version, path and journal mode."""
    settings = settings_for(database_path)
    state = revisions.status(settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    click.echo(f"database:       {state.path.resolve()}")
    click.echo(f"revision:       {state.current or '(none)'}")
    click.echo(f"head:           {state.head}" + ("" if state.up_to_date else "  (run `chatledger db migrate`)"))
    click.echo(f"schema_version: {state.schema_version or '-'}")
    click.echo(f"journal mode:   {state.journal_mode}")
    click.echo(f"size:           {human_bytes(sum(state.sizes.values()))}")


@db.command()
@click.argument("path", type=click.Path())
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@database_option
@friendly_errors
def backup(path: str, force: bool, database_path: Path | None) -> None:
    """Copy the database to PATH (a file, or a directory for a timestamped name), safely while it is in use."""
    settings = settings_for(database_path)
    if path.endswith(("/", os.sep)):
        Path(path).mkdir(parents=True, exist_ok=True)
    result = backups.backup(settings.database_path, Path(path), overwrite=force,
                            busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    click.echo(f"backup written to {result.path} ({human_bytes(result.size)}, {result.size} bytes, "
               f"{result.requests} requests, integrity ok, {result.seconds:.1f}s)")


@db.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Restore even if a gateway seems to be using the database.")
@database_option
@friendly_errors
def restore(path: Path, force: bool, database_path: Path | None) -> None:
    """Replace the database with the backup at PATH (the current file is kept as <db>.before-restore)."""
    settings = settings_for(database_path)
    result = backups.restore(settings.database_path, path, force=force, session_timeout_ms=settings.session_timeout,
                             busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    click.echo(f"restored {result.path} from {result.source} ({result.requests} requests)")
    migration = result.migration
    if migration is not None:
        click.echo(f"migrated the restored database from revision {migration.before or '(none)'} to "
                   f"{migration.after}" + ("; usage rollups rebuilt" if migration.rollups_rebuilt else ""))
    if result.previous is not None:
        click.echo(f"previous database kept as {result.previous}")


@db.command()
@database_option
@friendly_errors
def vacuum(database_path: Path | None) -> None:
    """Rebuild the database file to reclaim the space of deleted rows."""
    settings = settings_for(database_path)
    with Spinner(f"vacuuming {settings.database_path}") as spinner:
        result = maintenance.vacuum(settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms,
                                    on_progress=spinner.tick)
    click.echo(f"before: {result.before} bytes ({human_bytes(result.before)})")
    click.echo(f"after:  {result.after} bytes ({human_bytes(result.after)})")
    click.echo(f"reclaimed: {result.before - result.after} bytes")


@db.command()
@database_option
@friendly_errors
def check(database_path: Path | None) -> None:
    """PRAGMA integrity_check and foreign_key_check; exit status 1 on any problem."""
    settings = settings_for(database_path)
    result = maintenance.check(settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    if result.ok:
        click.echo(f"{result.path}: ok")
        return
    for line in result.integrity:
        click.echo(f"integrity: {line}")
    for line in result.foreign_keys:
        click.echo(f"foreign key: {line}")
    for name in result.missing_tables:
        click.echo(f"missing table: {name}")
    problems = len(result.integrity) + len(result.foreign_keys) + len(result.missing_tables)
    raise click.ClickException(f"{result.path}: {problems} problem(s) found")


@db.command()
@database_option
@friendly_errors
def stats(database_path: Path | None) -> None:
    """File sizes, row counts, time span and per-model figures."""
    settings = settings_for(database_path)
    figures = maintenance.stats(settings.database_path, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    sizes = figures.sizes
    click.echo(f"database:  {figures.path.resolve()}")
    click.echo(f"size:      {human_bytes(sum(sizes.values()))} (db {sizes['db']} B, wal {sizes['wal']} B, "
               f"shm {sizes['shm']} B; {figures.freelist_count} of {figures.page_count} pages free)")
    for table, count in figures.counts.items():
        click.echo(f"{table + ':':<10} {count}")
    click.echo(f"oldest:    {format_ms(figures.oldest_ms)}")
    click.echo(f"newest:    {format_ms(figures.newest_ms)}")
    if figures.models:
        width = max(len(item.model) for item in figures.models)
        click.echo("per model:")
        for item in figures.models:
            click.echo(f"  {item.model:<{width}}  {item.requests:>8} requests  {item.errors:>6} errors  "
                       f"{item.total_tokens:>12,} tokens")
