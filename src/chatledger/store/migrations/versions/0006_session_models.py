"""Which models and providers each session used, kept by the writer: one row per (session, model,
provider), written the first time a session meets one.

`/v1/sessions?model=` and `?provider=` asked the requests: 0004 added `requests(model, session_id)`
and widened the session index to (session_id, model, provider) for them, which costs the recorder
an index entry in a random place for every request (about an eighth of its time at 2,000 live
sessions). This table answers the same questions from a few rows per session, so both go: the
session index is the seed's again.

Revision ID: 0006
Revises: 0005
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_models",
        sa.Column("session_id", sa.Text, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),  # '' when the request had none
        sa.PrimaryKeyConstraint("session_id", "model", "provider"),
        sqlite_with_rowid=False,
    )
    op.create_index("idx_session_models_model", "session_models", ["model", "session_id"])
    op.create_index("idx_session_models_provider", "session_models", ["provider", "session_id"])
    op.execute("INSERT INTO session_models (session_id, model, provider) "
               "SELECT DISTINCT session_id, model, COALESCE(provider, '') FROM requests")
    op.drop_index("idx_requests_model_session", "requests")
    op.drop_index("idx_requests_session_id", "requests")
    op.create_index("idx_requests_session_id", "requests", ["session_id"])
    op.execute(f"UPDATE metadata SET value = '6', updated_at = {int(time.time() * 1000)} "
               "WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_index("idx_requests_session_id", "requests")
    op.create_index("idx_requests_session_id", "requests", ["session_id", "model", "provider"])
    op.create_index("idx_requests_model_session", "requests", ["model", "session_id"])
    op.drop_table("session_models")
    op.execute("UPDATE metadata SET value = '5' WHERE key = 'schema_version'")
