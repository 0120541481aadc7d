"""Indexes for the query API at millions of exchanges (docs/query-benchmarks.md).

* Errors are a few percent of the responses and `error` had no index, so every `status=error` filter
  read rows. Partial indexes on the errors alone serve the lists in time and duration order and the
  `status=error` filters of sessions and requests (a probe per candidate, their counts from an index).
* `/v1/sessions?model=` and `?provider=` ask which sessions have such a request. `(model,
  session_id)` counts a model's sessions from the index alone, in order; the session index gains the
  model and provider, so the probe per session reads no row (a request's model sits behind its body).
  It keeps its name (`idx_requests_session_id`) and leading column, and its entries go to the same places.
* The response lists read the hourly rollups to count and to choose a plan: a narrow copy of their
  key and two counters, model first, saves reading the 31 columns of every hour's rows.

Building them reads every request once: about 30 s at a million exchanges on SQLite.

Revision ID: 0004
Revises: 0003
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ERRORS = "error IS NOT NULL"
ERROR_INDEXES = {"idx_responses_errors_timestamp": ["timestamp"], "idx_responses_errors_duration": ["duration_ms"],
                 "idx_responses_errors_session": ["session_id"], "idx_responses_errors_request": ["request_id"]}


def _session_index(columns: list[str]) -> None:
    """Rebuild idx_requests_session_id on these columns (a request's session always leads)."""
    op.drop_index("idx_requests_session_id", "requests")
    op.create_index("idx_requests_session_id", "requests", columns)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    where = {"sqlite_where" if sqlite else "postgresql_where": sa.text(ERRORS)}
    for name, columns in ERROR_INDEXES.items():
        # Keyset pages order by (key, id): every SQLite index ends with the rowid, PostgreSQL's do not.
        tie = [] if sqlite or name.endswith(("_session", "_request")) else ["id"]
        op.create_index(name, "responses", [*columns, *tie], **where)
    op.create_index("idx_requests_model_session", "requests", ["model", "session_id"])
    _session_index(["session_id", "model", "provider"])
    op.create_index("idx_usage_hourly_model", "usage_hourly",
                    ["model", "bucket_start", "provider", "api_key_hash", "requests", "errors"])
    op.execute(f"UPDATE metadata SET value = '4', updated_at = {int(time.time() * 1000)} "
               "WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_index("idx_usage_hourly_model", "usage_hourly")
    _session_index(["session_id"])
    op.drop_index("idx_requests_model_session", "requests")
    for name in reversed(ERROR_INDEXES):
        op.drop_index(name, "responses")
    op.execute("UPDATE metadata SET value = '3' WHERE key = 'schema_version'")
