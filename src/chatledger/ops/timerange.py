"""Command-line times: `YYYY-MM-DD`, an ISO date-time, or milliseconds since the epoch (all UTC)."""

from __future__ import annotations

import datetime as dt

from chatledger.ops.errors import OpsError

DAY_MS = 86_400_000


class BadTime(OpsError):
    pass


def parse_time(value: str, *, end: bool = False) -> int:
    """Milliseconds since the epoch. A bare date given as an `end` covers that whole day: the bound is the
    next midnight, so `--from 2025-01-01 --to 2025-01-31` is all of January."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
            return start + DAY_MS if end else start
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadTime(f"cannot read {value!r} as a time: use YYYY-MM-DD or milliseconds since the epoch") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def format_ms(value: int | None) -> str:
    if value is None:
        return "-"
    moment = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{value % 1000:03d} UTC"
