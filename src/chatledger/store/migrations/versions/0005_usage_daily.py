"""Daily usage rollups beside the hourly ones, kept by the writer in the same transactions.

Usage by day and the overall stats summed every hourly row (about 50,000 for a month of a busy
gateway: ~100-300 ms); the daily table holds 24 times fewer. Filled here from the hourly rows, and
the delete trigger takes a deleted response out of both.

Revision ID: 0005
Revises: 0004
"""

import importlib
import time

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DAY_MS = 86_400_000
HISTOGRAM_BUCKETS = 20
COUNTERS = ("requests", "errors", "streamed", "prompt_tokens", "completion_tokens", "total_tokens", "cost",
            "unpriced", "duration_ms_sum", "ttft_ms_sum", "ttft_count")
HISTOGRAM = tuple(f"h{i:02d}" for i in range(HISTOGRAM_BUCKETS))

# 0002's trigger body for the hourly table, which this revision extends to the daily one.
_usage_search = importlib.import_module("chatledger.store.migrations.versions.0002_usage_search")


def _forget_daily(sqlite: bool) -> str:
    hourly = _usage_search._forget_usage(sqlite)
    return hourly.replace("UPDATE usage_hourly", "UPDATE usage_daily").replace(
        "bucket_start = OLD.timestamp - OLD.timestamp % 3600000",
        f"bucket_start = OLD.timestamp - OLD.timestamp % {DAY_MS}")


def _replace_forget_trigger(sqlite: bool, statements: list[str]) -> None:
    """The delete trigger's body becomes `statements` (on PostgreSQL the trigger calls this function)."""
    body = "".join(f"  {statement};\n" for statement in statements)
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS responses_forget")
        op.execute(f"CREATE TRIGGER responses_forget AFTER DELETE ON responses\nBEGIN\n{body}END")
    else:
        op.execute("CREATE OR REPLACE FUNCTION responses_forget() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                   f"BEGIN\n{body}  RETURN NULL;\nEND\n$$")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    columns = [sa.Column(name, sa.Float if name == "cost" else sa.BigInteger, nullable=False, server_default="0")
               for name in COUNTERS + HISTOGRAM]
    op.create_table(
        "usage_daily",
        sa.Column("bucket_start", sa.BigInteger, nullable=False),  # ms, floor to the UTC day
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("api_key_hash", sa.Text, nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("bucket_start", "model", "provider", "api_key_hash"),
    )
    names = ", ".join(("bucket_start", "model", "provider", "api_key_hash", *COUNTERS, *HISTOGRAM))
    sums = ", ".join(f"SUM({name})" for name in COUNTERS + HISTOGRAM)
    op.execute(f"INSERT INTO usage_daily ({names}) SELECT bucket_start - bucket_start % {DAY_MS}, model, provider, "
               f"api_key_hash, {sums} FROM usage_hourly GROUP BY 1, 2, 3, 4")
    _replace_forget_trigger(sqlite, [_usage_search._forget_usage(sqlite), _forget_daily(sqlite)])
    op.execute(f"UPDATE metadata SET value = '5', updated_at = {int(time.time() * 1000)} "
               "WHERE key = 'schema_version'")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    _replace_forget_trigger(sqlite, [_usage_search._forget_usage(sqlite)])
    op.drop_table("usage_daily")
    op.execute("UPDATE metadata SET value = '4' WHERE key = 'schema_version'")
