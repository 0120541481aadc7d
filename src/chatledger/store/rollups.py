"""Usage rollups, by the hour and by the day: the writer folds each batch into a few UPSERTs of each,
so usage and stats never scan history (and a month is 30 daily rows per group, not 720 hourly ones).
Counters only ever add up, so concurrent writers (replicas) cannot lose an update."""

from __future__ import annotations

from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
HISTOGRAM_BUCKETS = 20  # bucket i counts durations in [2**(i-1), 2**i) ms; bucket 0 is 0 ms
COUNTERS = ("requests", "errors", "streamed", "prompt_tokens", "completion_tokens", "total_tokens", "cost",
            "unpriced", "duration_ms_sum", "ttft_ms_sum", "ttft_count")
HISTOGRAM_COLUMNS = tuple(f"h{i:02d}" for i in range(HISTOGRAM_BUCKETS))
KEY_COLUMNS = ("bucket_start", "model", "provider", "api_key_hash")

def _upsert(table: str) -> str:
    return (f"INSERT INTO {table} ({', '.join(KEY_COLUMNS + COUNTERS + HISTOGRAM_COLUMNS)}) "
            f"VALUES ({', '.join('?' * (len(KEY_COLUMNS) + len(COUNTERS) + HISTOGRAM_BUCKETS))}) "
            f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
            + ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in COUNTERS + HISTOGRAM_COLUMNS))


UPSERT_USAGE = _upsert("usage_hourly")
UPSERT_USAGE_DAILY = _upsert("usage_daily")  # the same rows, keyed by the UTC day (`daily`)


def duration_bucket(duration_ms: int) -> int:
    # Runs for every exchange: comparisons, not min/max calls.
    bucket = duration_ms.bit_length() if duration_ms > 0 else 0
    return bucket if bucket < HISTOGRAM_BUCKETS else HISTOGRAM_BUCKETS - 1


def bucket_upper_bound_ms(bucket: int) -> int:
    return 1 << bucket


@dataclass(slots=True)
class Exchange:
    timestamp: int
    model: str
    provider: str
    api_key_hash: str | None
    error: bool
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost: float | None
    duration_ms: int | None
    ttft_ms: int | None = None


class RollupBatch:
    def __init__(self) -> None:
        self._rows: dict[tuple[int, str, str, str], list[float]] = {}

    def add(self, exchange: Exchange) -> None:
        key = (exchange.timestamp - exchange.timestamp % HOUR_MS, exchange.model or "", exchange.provider or "",
               exchange.api_key_hash or "")
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0] * (len(COUNTERS) + HISTOGRAM_BUCKETS)
        row[0] += 1
        row[1] += exchange.error
        row[2] += exchange.stream
        row[3] += exchange.prompt_tokens or 0
        row[4] += exchange.completion_tokens or 0
        row[5] += exchange.total_tokens or 0
        if exchange.cost is None:
            row[7] += 1
        else:
            row[6] += exchange.cost
        if exchange.ttft_ms is not None:
            row[9] += exchange.ttft_ms
            row[10] += 1
        if exchange.duration_ms is not None:
            row[8] += exchange.duration_ms
            row[len(COUNTERS) + duration_bucket(exchange.duration_ms)] += 1

    def rows(self) -> list[tuple]:
        return [(*key, *values) for key, values in self._rows.items()]


def daily(hourly: list[tuple]) -> list[tuple]:
    """Hourly rollup rows folded into the days they fall in (rows as `RollupBatch.rows` makes them)."""
    days: dict[tuple, list[float]] = {}
    for row in hourly:
        key = (row[0] - row[0] % DAY_MS, *row[1:4])
        values = days.get(key)
        if values is None:
            days[key] = list(row[4:])
        else:
            for index, value in enumerate(row[4:]):
                values[index] += value
    return [(*key, *values) for key, values in days.items()]


def _bucket_case(duration: str) -> str:
    steps = " ".join(f"WHEN {duration} < {1 << i} THEN {i}" for i in range(HISTOGRAM_BUCKETS - 1))
    return f"CASE WHEN {duration} IS NULL THEN -1 {steps} ELSE {HISTOGRAM_BUCKETS - 1} END"


BACKFILL_RESPONSE_ATTRIBUTES = """
UPDATE responses SET
  model = (SELECT model FROM requests WHERE requests.id = responses.request_id),
  provider = COALESCE((SELECT provider FROM requests WHERE requests.id = responses.request_id), ''),
  api_key_hash = (SELECT api_key_hash FROM requests WHERE requests.id = responses.request_id)
WHERE model IS NULL
"""


def rebuild_statements() -> list[str]:
    """SQL that recomputes the rollups from the rows, for rows written around the writer (imports,
    restores of old backups). Runs in the caller's transaction."""
    return [*hourly_rebuild_statements(), *daily_from_hourly_statements()]


def hourly_rebuild_statements() -> list[str]:
    """The hourly half of `rebuild_statements` (migration 0002 runs it: there is no daily table yet)."""
    bucket = _bucket_case("r.duration_ms")
    histogram = ", ".join(f"SUM(CASE WHEN {bucket} = {i} THEN 1 ELSE 0 END)" for i in range(HISTOGRAM_BUCKETS))
    columns = ", ".join(KEY_COLUMNS + COUNTERS + HISTOGRAM_COLUMNS)
    return [
        BACKFILL_RESPONSE_ATTRIBUTES,
        "DELETE FROM usage_hourly",
        f"""INSERT INTO usage_hourly ({columns})
        SELECT r.timestamp - r.timestamp % {HOUR_MS}, COALESCE(r.model, ''), COALESCE(r.provider, ''),
               COALESCE(r.api_key_hash, ''), COUNT(*),
               SUM(CASE WHEN r.error IS NOT NULL THEN 1 ELSE 0 END),
               SUM(CASE WHEN q.stream THEN 1 ELSE 0 END),
               SUM(COALESCE(r.prompt_tokens, 0)), SUM(COALESCE(r.completion_tokens, 0)),
               SUM(COALESCE(r.total_tokens, 0)), SUM(COALESCE(r.cost, 0)),
               SUM(CASE WHEN r.cost IS NULL THEN 1 ELSE 0 END), SUM(COALESCE(r.duration_ms, 0)),
               SUM(COALESCE(r.ttft_ms, 0)), SUM(CASE WHEN r.ttft_ms IS NOT NULL THEN 1 ELSE 0 END),
               {histogram}
        FROM responses r JOIN requests q ON q.id = r.request_id
        GROUP BY 1, 2, 3, 4""",
    ]


def daily_from_hourly_statements() -> list[str]:
    """SQL that recomputes usage_daily from usage_hourly (the rebuild's second step; migration 0005)."""
    columns = ", ".join(KEY_COLUMNS + COUNTERS + HISTOGRAM_COLUMNS)
    sums = ", ".join(f"SUM({c})" for c in COUNTERS + HISTOGRAM_COLUMNS)
    return ["DELETE FROM usage_daily",
            f"INSERT INTO usage_daily ({columns}) SELECT bucket_start - bucket_start % {DAY_MS}, model, provider, "
            f"api_key_hash, {sums} FROM usage_hourly GROUP BY 1, 2, 3, 4"]
