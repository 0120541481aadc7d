"""The store's tables as SQLAlchemy Core metadata, for readers and tests.

The migrations under `migrations/versions/` are the source of truth for what exists on disk; this
module mirrors their latest state so queries can be built without raw SQL strings.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only aliases the rowid for the exact type name INTEGER; PostgreSQL wants 64 bits.
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

meta = sa.Table(
    "metadata", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("session_key", sa.Text, nullable=False),
    sa.Column("chat_id", sa.Text),
    sa.Column("parent_id", sa.Text),
    sa.Column("first_user_message", sa.Text),
    sa.Column("api_key_hash", sa.Text),
    sa.Column("message_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

requests = sa.Table(
    "requests", metadata,
    sa.Column("id", RowId, primary_key=True),
    sa.Column("session_id", sa.Text, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("openai_request", sa.Text, nullable=False),
    # NULL when the provider was sent exactly `openai_request`.
    sa.Column("provider_request", sa.Text),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("provider", sa.Text),
    sa.Column("upstream_model", sa.Text),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("api_key_hash", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

responses = sa.Table(
    "responses", metadata,
    sa.Column("id", RowId, primary_key=True),
    sa.Column("request_id", RowId, sa.ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
    sa.Column("session_id", sa.Text, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    sa.Column("response_id", sa.Text, nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    # NULL when the provider's answer is `openai_response` itself, and for streams.
    sa.Column("provider_response", sa.Text),
    sa.Column("openai_response", sa.Text),
    sa.Column("parent_id", sa.Text),
    sa.Column("upstream_id", sa.Text),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("total_tokens", sa.Integer),
    sa.Column("finish_reason", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("status_code", sa.Integer),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("ttft_ms", sa.Integer),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Migration 0002: the answer's cost (USD; NULL when unknown) and its request's attributes.
    sa.Column("cost", sa.Float),
    sa.Column("model", sa.Text),
    sa.Column("provider", sa.Text),
    sa.Column("api_key_hash", sa.Text),
)

def _rollup_table(name: str) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("bucket_start", sa.BigInteger, primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("api_key_hash", sa.Text, primary_key=True),
        *(sa.Column(column, sa.Float if column == "cost" else sa.BigInteger, nullable=False)
          for column in ("requests", "errors", "streamed", "prompt_tokens", "completion_tokens", "total_tokens",
                         "cost", "unpriced", "duration_ms_sum", "ttft_ms_sum", "ttft_count")),
        *(sa.Column(f"h{i:02d}", sa.BigInteger, nullable=False) for i in range(20)),
    )


# The writer's usage rollups (chatledger.store.rollups): by the hour (migration 0002), by the day (0005).
usage_hourly = _rollup_table("usage_hourly")
usage_daily = _rollup_table("usage_daily")

settings = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# Migration 0006: the models and providers each session used, one row per pair (the writer's).
session_models = sa.Table(
    "session_models", metadata,
    sa.Column("session_id", sa.Text, sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
)
