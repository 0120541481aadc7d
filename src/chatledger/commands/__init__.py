"""The maintenance commands (`db`, `export`, `report`, `import`): thin click shells over `chatledger.ops`."""

from __future__ import annotations

import functools
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from chatledger.config import Settings
from chatledger.ops.errors import OpsError

F = TypeVar("F", bound=Callable[..., Any])


def database_option(func: F) -> F:
    return click.option("--database", "database_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="SQLite file (DATABASE_PATH, default ./data/chatledger.db).")(func)


def settings_for(database_path: Path | None) -> Settings:
    try:
        settings = Settings(**({"database_path": database_path} if database_path is not None else {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from exc
    if settings.database_url and database_path is None:
        raise click.ClickException("these commands work on a SQLite file; DATABASE_URL is set, pass --database")
    return settings


def friendly_errors(func: F) -> F:
    """One line and exit status 1 for every expected failure, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OpsError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from exc

    return wrapper  # type: ignore[return-value]


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


class Spinner:
    """A spinner on stderr while a long single statement runs; one plain line when stderr is not a terminal."""

    FRAMES = "|/-\\"

    def __init__(self, label: str) -> None:
        self.label = label
        self.interactive = sys.stderr.isatty()
        self.frames = itertools.cycle(self.FRAMES)
        self.last = 0.0
        self.started = time.monotonic()

    def __enter__(self) -> Spinner:
        if not self.interactive:
            click.echo(f"{self.label}...", err=True)
        return self

    def tick(self) -> None:
        now = time.monotonic()
        if self.interactive and now - self.last >= 0.1:
            self.last = now
            click.echo(f"\r{next(self.frames)} {self.label} ({now - self.started:.0f}s)", err=True, nl=False)

    def __exit__(self, *exc_info: object) -> None:
        if self.interactive:
            click.echo("\r" + " " * (len(self.label) + 16) + "\r", err=True, nl=False)
