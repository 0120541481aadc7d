"""Usage over a time range, grouped by day, hour, model, provider or API key: read from the rollups the
writer keeps (rollups.py), so the cost of a query grows with days (or hours) x groups, never with the
number of exchanges recorded. Whole days come from the daily rollups, the hours at either end of a
range that does not start or stop at midnight from the hourly ones; grouping by hour reads hours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from chatledger.store.rollups import COUNTERS, DAY_MS, HISTOGRAM_BUCKETS, HISTOGRAM_COLUMNS, HOUR_MS

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


SUMMED = COUNTERS + HISTOGRAM_COLUMNS
AT = {name: index for index, name in enumerate(SUMMED)}


def _figures(sums: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """The figures of one group, from its sums in SUMMED order."""
    histogram = [int(value or 0) for value in sums[len(COUNTERS):]]
    timed = sum(histogram)
    return {
        "requests": int(sums[AT["requests"]] or 0),
        "errors": int(sums[AT["errors"]] or 0),
        "streamed": int(sums[AT["streamed"]] or 0),
        "prompt_tokens": int(sums[AT["prompt_tokens"]] or 0),
        "completion_tokens": int(sums[AT["completion_tokens"]] or 0),
        "total_tokens": int(sums[AT["total_tokens"]] or 0),
        "cost": round(float(sums[AT["cost"]] or 0.0), 10),
        "unpriced_requests": int(sums[AT["unpriced"]] or 0),
        "avg_duration_ms": round(int(sums[AT["duration_ms_sum"]] or 0) / timed, 2) if timed else None,
        # Rollups keep a power-of-two histogram: p95 is the upper edge of its bucket.
        "p95_duration_ms": percentile_from_histogram(histogram, 0.95),
    }


def _attributes(query: UsageQuery, params: dict[str, Any]) -> list[str]:
    clauses: list[str] = []
    for name, column in (("model", "model"), ("provider", "provider"), ("api_key_hash", "api_key_hash")):
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{column} = :{name}")
            params[name] = value
    return clauses


def _sources(query: UsageQuery, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The rollup rows the range covers, as (table, WHERE) pairs: usage_daily for its whole days and
    usage_hourly for the hours at its ends (or usage_hourly alone, to group by the hour)."""
    attributes = _attributes(query, params)
    since = None if query.since is None else query.since - query.since % HOUR_MS
    until = query.until

    def part(table: str, ranges: list[tuple[int | None, int | None]]) -> tuple[str, str]:
        alternatives = []
        for index, (low, high) in enumerate(ranges):
            bounds = []
            if low is not None:
                params[f"{table}_low{index}"] = low
                bounds.append(f"bucket_start >= :{table}_low{index}")
            if high is not None:
                params[f"{table}_high{index}"] = high
                bounds.append(f"bucket_start < :{table}_high{index}")
            alternatives.append(" AND ".join(bounds) or "1 = 1")
        return table, " AND ".join([*attributes, "(" + " OR ".join(f"({a})" for a in alternatives) + ")"])

    if "hour" in query.group_by:
        return [part("usage_hourly", [(since, until)])]
    # Whole days: from the first midnight at or after `since` to the last one at or before `until`.
    first_day = None if since is None else -(-since // DAY_MS) * DAY_MS
    last_day = None if until is None else until - until % DAY_MS
    if first_day is not None and last_day is not None and first_day >= last_day:
        return [part("usage_hourly", [(since, until)])]  # less than a whole day
    edges = [(since, first_day)] if since is not None and since < first_day else []
    if until is not None and last_day < until:
        edges.append((last_day, until))
    days = part("usage_daily", [(first_day, last_day)])
    return [days, part("usage_hourly", edges)] if edges else [days]


def usage(connection: sa.Connection, query: UsageQuery) -> dict[str, Any]:
    sums = ", ".join(f"SUM({c}) AS {c}" for c in SUMMED)
    params: dict[str, Any] = {}
    parts = _sources(query, params)
    expressions = dict(GROUP_COLUMNS)
    if len(parts) == 1:  # one table: read it directly (a subquery would be copied first)
        table, where = parts[0]
        from_ = f"{table} WHERE {where}"
        if table == "usage_daily":  # its rows start at midnight: grouping walks its key, no sort
            expressions["day"] = "bucket_start"
    else:
        columns = ", ".join(("bucket_start", "model", "provider", "api_key_hash", *COUNTERS, *HISTOGRAM_COLUMNS))
        union = " UNION ALL ".join(f"SELECT {columns} FROM {table} WHERE {where}" for table, where in parts)
        from_ = f"({union}) AS rollups"
    groups = [f"{expressions[g]} AS g{i}" for i, g in enumerate(query.group_by)]
    group_sql = ""
    if groups:
        positions = ", ".join(str(i + 1) for i in range(len(groups)))
        group_sql = f"GROUP BY {positions} ORDER BY {positions}"
    select = ", ".join([*groups, sums])
    rows = connection.execute(sa.text(f"SELECT {select} FROM {from_} {group_sql}"), params).fetchall()
    data = []
    width = len(query.group_by)
    totals = [0] * len(SUMMED)
    for row in rows:  # plain tuples: the group values, then the sums in SUMMED order
        entry: dict[str, Any] = {group: _label(group, row[i]) for i, group in enumerate(query.group_by)}
        values = row[width:]
        entry.update(_figures(values))
        data.append(entry)
        totals = [total + (value or 0) for total, value in zip(totals, values, strict=True)]
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
