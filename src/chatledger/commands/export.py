"""`chatledger export ...`: one session as a JSON document, or exchanges as JSON lines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

import click
import orjson

from chatledger.commands import database_option, friendly_errors, settings_for
from chatledger.ops import export as exports
from chatledger.ops.timerange import parse_time


@click.group()
def export() -> None:
    """Export recorded exchanges."""


@export.command("session")
@click.argument("session_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@database_option
@friendly_errors
def export_session(session_id: str, output: Path | None, database_path: Path | None) -> None:
    """The session SESSION_ID with its requests, responses and stats, as one JSON document."""
    settings = settings_for(database_path)
    document = exports.export_session(settings.database_path, session_id,
                                      busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        click.echo(f"exported session {session_id} ({len(document['requests'])} requests) to {output}", err=True)


@export.command("jsonl")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@click.option("--from", "start", default=None, help="From this time (YYYY-MM-DD or ms since the epoch, UTC).")
@click.option("--to", "end", default=None, help="Until this time, exclusive (a date includes that whole day).")
@click.option("--model", default=None, help="Only requests for this model (as the client named it).")
@click.option("--format", "style", type=click.Choice(["raw", "openai-finetune"]), default="raw", show_default=True,
              help="raw: request, response and metadata per exchange; openai-finetune: OpenAI's chat "
                   "fine-tuning lines, successful chat completions only.")
@database_option
@friendly_errors
def export_jsonl(output: Path | None, start: str | None, end: str | None, model: str | None, style: str,
                 database_path: Path | None) -> None:
    """One exchange per line."""
    settings = settings_for(database_path)
    selection = exports.ExchangeFilter(parse_time(start) if start else None,
                                       parse_time(end, end=True) if end else None, model)
    timeout = settings.sqlite_busy_timeout_ms
    total = exports.count_exchanges(settings.database_path, selection, busy_timeout_ms=timeout)
    stream: IO[bytes] = sys.stdout.buffer if output is None else output.open("wb")
    written = skipped = 0
    try:
        with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
            for item in exports.iter_exchanges(settings.database_path, selection, busy_timeout_ms=timeout):
                line = item if style == "raw" else exports.finetune_example(item)
                bar.update(1)
                if line is None:
                    skipped += 1
                    continue
                stream.write(orjson.dumps(line) + b"\n")
                written += 1
    finally:
        if output is None:
            stream.flush()
        else:
            stream.close()
    click.echo(f"wrote {written} lines" + (f", skipped {skipped} exchanges that are not successful chat "
                                           "completions" if skipped else "")
               + (f" to {output}" if output else ""), err=True)
