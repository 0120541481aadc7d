"""The seeds' schema: metadata, sessions, requests, responses, settings, their indexes and cascades.

Revision ID: 0001
Revises:
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # Keyset pages are ordered by (sort key, id). Every SQLite index ends with the rowid `id`, so it
    # serves the tie-break as is; PostgreSQL needs the id named as the index's second column.
    tie = [] if sqlite else ["id"]
    op.create_table(
        "metadata",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("session_key", sa.Text, nullable=False),
        sa.Column("chat_id", sa.Text),
        sa.Column("parent_id", sa.Text),
        sa.Column("first_user_message", sa.Text),
        sa.Column("api_key_hash", sa.Text),
        sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("idx_sessions_expires_at", "sessions", ["expires_at"])
    op.create_index("idx_sessions_chat_id", "sessions", ["chat_id"])
    op.create_index("idx_sessions_created_at", "sessions", ["created_at", *tie])
    op.create_index("idx_sessions_session_key", "sessions", ["session_key", "created_at"])

    request_columns = [
        sa.Column("id", RowId, primary_key=True),
        sa.Column("session_id", sa.Text, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("openai_request", sa.Text, nullable=False),
        sa.Column("provider_request", sa.Text),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("provider", sa.Text),
        sa.Column("upstream_model", sa.Text),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("api_key_hash", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    ]
    if sqlite:
        # Seed 000's queries read `qwen_request`: a virtual column costs no storage.
        request_columns.append(sa.Column(
            "qwen_request", sa.Text,
            sa.Computed("COALESCE(provider_request, openai_request)", persisted=False)))
    op.create_table("requests", *request_columns, sqlite_autoincrement=True)
    op.create_index("idx_requests_session_id", "requests", ["session_id"])
    op.create_index("idx_requests_timestamp", "requests", ["timestamp", *tie])
    op.create_index("idx_requests_request_id", "requests", ["request_id"], unique=True)
    op.create_index("idx_requests_created_at", "requests", ["created_at"])

    response_columns = [
        sa.Column("id", RowId, primary_key=True),
        sa.Column("request_id", RowId, sa.ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
        sa.Column("session_id", sa.Text, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("response_id", sa.Text, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
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
    ]
    if sqlite:
        response_columns.append(sa.Column(
            "qwen_response", sa.Text,
            sa.Computed("COALESCE(provider_response, openai_response)", persisted=False)))
    op.create_table("responses", *response_columns, sqlite_autoincrement=True)
    op.create_index("idx_responses_request_id", "responses", ["request_id"])
    op.create_index("idx_responses_session_id", "responses", ["session_id"])
    op.create_index("idx_responses_response_id", "responses", ["response_id"], unique=True)
    op.create_index("idx_responses_timestamp", "responses", ["timestamp", *tie])
    op.create_index("idx_responses_created_at", "responses", ["created_at"])

    op.execute(sa.text("INSERT INTO metadata (key, value, updated_at) VALUES ('schema_version', '1', :now)")
               .bindparams(now=int(time.time() * 1000)))


def downgrade() -> None:
    for table in ("responses", "requests", "sessions", "settings", "metadata"):
        op.drop_table(table)
