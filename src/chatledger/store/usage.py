"""Usage over a time range, grouped by day, hour, model, provider or API key: read from the hourly
rollups the writer keeps (rollups.py), so the cost of a query grows with hours x groups, never with
the number of exchanges recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from chatledger.store.rollups import COUNTERS, HISTOGRAM_BUCKETS, HISTOGRAM_COLUMNS, HOUR_MS

DAY_MS = 24 * HOUR_MS
GroupBy = Literal["day", "hour", "model", "provider", "api_key"]
GROUP_COLUMNS: dict[str, str] = {
    "day": f"(bucket_start / {DAY_MS}) * {DAY_MS}",
    "hour": "bucket_start",
    "model": "model",
    "provider": "provider",
    "api_key": "api_key_hash",
}


@dataclass(frozen=True, slots=True)
class UsageQuery:
    group_by: tuple[GroupBy, ...]
    since: int | None = None  # ms, rounded down to the hour
    until: int | None = None  # ms, exclusive, rounded up to the hour
    model: str | None = None
    provider: str | None = None
    api_key_hash: str | None = None


def percentile_from_histogram(counts: list[int], fraction: float) -> int | None:
    """The upper bound (ms) of the histogram bucket holding the given fraction of durations."""
    total = sum(counts)
    if not total:
        return None
    rank = fraction * total
    running = 0
    for bucket, count in enumerate(counts):
        running += count
        if running >= rank:
            return 1 << bucket
    return 1 << (HISTOGRAM_BUCKETS - 1)


def _figures(values: dict[str, Any]) -> dict[str, Any]:
    requests = int(values["requests"] or 0)
    histogram = [int(values[c] or 0) for c in HISTOGRAM_COLUMNS]
    timed = sum(histogram)
    return {
        "requests": requests,
        "errors": int(values["errors"] or 0),
        "streamed": int(values["streamed"] or 0),
        "prompt_tokens": int(values["prompt_tokens"] or 0),
        "completion_tokens": int(values["completion_tokens"] or 0),
        "total_tokens": int(values["total_tokens"] or 0),
        "cost": round(float(values["cost"] or 0.0), 10),
        "unpriced_requests": int(values["unpriced"] or 0),
        "avg_duration_ms": round(int(values["duration_ms_sum"] or 0) / timed, 2) if timed else None,
        # Rollups keep a power-of-two histogram: p95 is the upper edge of its bucket.
        "p95_duration_ms": percentile_from_histogram(histogram, 0.95),
    }


def _where(query: UsageQuery) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if query.since is not None:
        clauses.append("bucket_start >= :since")
        params["since"] = query.since - query.since % HOUR_MS
    if query.until is not None:
        clauses.append("bucket_start < :until")
        params["until"] = query.until
    for name, column in (("model", "model"), ("provider", "provider"), ("api_key_hash", "api_key_hash")):
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{column} = :{name}")
            params[name] = value
    return clauses, params


def usage(connection: sa.Connection, query: UsageQuery) -> dict[str, Any]:
    sums = ", ".join(f"SUM({c}) AS {c}" for c in COUNTERS + HISTOGRAM_COLUMNS)
    groups = [f"{GROUP_COLUMNS[g]} AS g{i}" for i, g in enumerate(query.group_by)]
    clauses, params = _where(query)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    group_sql = ""
    if groups:
        positions = ", ".join(str(i + 1) for i in range(len(groups)))
        group_sql = f"GROUP BY {positions} ORDER BY {positions}"
    select = ", ".join([*groups, sums])
    rows = connection.execute(sa.text(f"SELECT {select} FROM usage_hourly {where} {group_sql}"), params).mappings()
    data = []
    totals: dict[str, Any] = {c: 0 for c in COUNTERS + HISTOGRAM_COLUMNS}
    for row in rows:
        entry: dict[str, Any] = {}
        for i, group in enumerate(query.group_by):
            value = row[f"g{i}"]
            entry[group] = _label(group, value)
        entry.update(_figures(row))
        data.append(entry)
        for column in totals:
            totals[column] += row[column] or 0
    return {"object": "usage", "group_by": list(query.group_by), "from": query.since, "to": query.until,
            "data": data, "totals": _figures(totals)}


def _label(group: str, value: Any) -> Any:
    if group in ("day", "hour"):
        import datetime

        moment = datetime.datetime.fromtimestamp(int(value) / 1000, tz=datetime.UTC)
        return moment.strftime("%Y-%m-%d" if group == "day" else "%Y-%m-%dT%H:00Z")
    if group == "api_key":
        return value or None
    return value
