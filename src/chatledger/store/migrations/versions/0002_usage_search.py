"""Cost per response, hourly usage rollups kept by the writer, full-text search over exchanges.

Revision ID: 0002
Revises: 0001
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HISTOGRAM_BUCKETS = 20  # duration_ms by powers of two: bucket i holds durations < 2**i ms


def _bucket_expression(duration: str) -> str:
    """SQL for the histogram bucket of a duration, matching chatledger.store.rollups.duration_bucket."""
    steps = " ".join(f"WHEN {duration} < {1 << i} THEN {i}" for i in range(HISTOGRAM_BUCKETS - 1))
    return f"(CASE WHEN {duration} IS NULL THEN -1 {steps} ELSE {HISTOGRAM_BUCKETS - 1} END)"


def _flag(condition: str, sqlite: bool) -> str:
    """A condition as 0 or 1: SQLite's booleans are integers already, PostgreSQL's need a cast."""
    return f"({condition})" if sqlite else f"({condition})::int"


def _histogram_decrements(duration: str, sqlite: bool) -> str:
    bucket = _bucket_expression(duration)
    return ",\n".join(f"h{i:02d} = h{i:02d} - {_flag(f'{bucket} = {i}', sqlite)}" for i in range(HISTOGRAM_BUCKETS))


def _forget_usage(sqlite: bool) -> str:
    """The UPDATE that takes a deleted response (OLD) out of its hour's rollup."""
    return f"""UPDATE usage_hourly SET
                requests = requests - 1,
                errors = errors - {_flag('OLD.error IS NOT NULL', sqlite)},
                prompt_tokens = prompt_tokens - COALESCE(OLD.prompt_tokens, 0),
                completion_tokens = completion_tokens - COALESCE(OLD.completion_tokens, 0),
                total_tokens = total_tokens - COALESCE(OLD.total_tokens, 0),
                cost = cost - COALESCE(OLD.cost, 0),
                unpriced = unpriced - {_flag('OLD.cost IS NULL', sqlite)},
                duration_ms_sum = duration_ms_sum - COALESCE(OLD.duration_ms, 0),
                ttft_ms_sum = ttft_ms_sum - COALESCE(OLD.ttft_ms, 0),
                ttft_count = ttft_count - {_flag('OLD.ttft_ms IS NOT NULL', sqlite)},
                {_histogram_decrements('OLD.duration_ms', sqlite)}
              WHERE bucket_start = OLD.timestamp - OLD.timestamp % 3600000
                AND model = COALESCE(OLD.model, '') AND provider = COALESCE(OLD.provider, '')
                AND api_key_hash = COALESCE(OLD.api_key_hash, '')"""


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("cost", sa.Float))  # USD; NULL when the model's price is unknown
        # Copied from the request so usage and deletes need no join.
        batch.add_column(sa.Column("model", sa.Text))
        batch.add_column(sa.Column("provider", sa.Text))
        batch.add_column(sa.Column("api_key_hash", sa.Text))
    op.create_index("idx_requests_model_timestamp", "requests", ["model", "timestamp"])
    op.create_index("idx_requests_api_key_timestamp", "requests", ["api_key_hash", "timestamp"])
    op.create_index("idx_responses_duration", "responses", ["duration_ms", *([] if sqlite else ["id"])])

    histogram = [sa.Column(f"h{i:02d}", sa.BigInteger, nullable=False, server_default="0")
                 for i in range(HISTOGRAM_BUCKETS)]
    op.create_table(
        "usage_hourly",
        sa.Column("bucket_start", sa.BigInteger, nullable=False),  # ms, floor to the hour (UTC)
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("api_key_hash", sa.Text, nullable=False),  # '' for callers without a key
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("errors", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("streamed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost", sa.Float, nullable=False, server_default="0"),
        sa.Column("unpriced", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("duration_ms_sum", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("ttft_ms_sum", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("ttft_count", sa.BigInteger, nullable=False, server_default="0"),
        *histogram,
        sa.PrimaryKeyConstraint("bucket_start", "model", "provider", "api_key_hash"),
    )

    if sqlite:
        op.execute("CREATE VIRTUAL TABLE search_index USING fts5("
                   "prompt, response, tokenize = 'unicode61 remove_diacritics 2')")
        # A deleted response (a session deleted, cascading) leaves the index and the rollups.
        op.execute(f"""
            CREATE TRIGGER responses_forget AFTER DELETE ON responses
            BEGIN
              DELETE FROM search_index WHERE rowid = OLD.id;
              {_forget_usage(sqlite)};
            END
        """)
    else:
        # The 'simple' configuration: no stemming or stop words, like FTS5's unicode61 (any language).
        op.execute("""
            CREATE TABLE search_index (
              id BIGINT PRIMARY KEY REFERENCES responses (id) ON DELETE CASCADE,
              prompt TEXT NOT NULL DEFAULT '',
              response TEXT NOT NULL DEFAULT '',
              document tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('simple', prompt), 'A') || setweight(to_tsvector('simple', response), 'B')
              ) STORED
            )
        """)
        op.execute("CREATE INDEX idx_search_index_document ON search_index USING GIN (document)")
        # The search rows leave through their foreign key; the rollups through this trigger.
        op.execute(f"""
            CREATE FUNCTION responses_forget() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              {_forget_usage(sqlite)};
              RETURN NULL;
            END
            $$
        """)
        op.execute("CREATE TRIGGER responses_forget AFTER DELETE ON responses "
                   "FOR EACH ROW EXECUTE FUNCTION responses_forget()")
    # Rows recorded before this revision get their rollups now (the search index catches up by itself).
    from chatledger.store.rollups import hourly_rebuild_statements

    for statement in hourly_rebuild_statements():
        op.execute(statement)
    op.execute(sa.text("UPDATE metadata SET value = '2', updated_at = :now WHERE key = 'schema_version'")
               .bindparams(now=int(time.time() * 1000)))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS responses_forget")
    else:
        op.execute("DROP TRIGGER IF EXISTS responses_forget ON responses")
        op.execute("DROP FUNCTION IF EXISTS responses_forget()")
    op.execute("DROP TABLE IF EXISTS search_index")
    op.drop_table("usage_hourly")
    op.drop_index("idx_responses_duration", "responses")
    op.drop_index("idx_requests_api_key_timestamp", "requests")
    op.drop_index("idx_requests_model_timestamp", "requests")
    with op.batch_alter_table("responses") as batch:
        for column in ("api_key_hash", "provider", "model", "cost"):
            batch.drop_column(column)
