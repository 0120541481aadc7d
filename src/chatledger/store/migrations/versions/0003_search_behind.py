"""The search index follows the ledger instead of being written with it.

SQLite: the FTS5 table leaves the ledger for a file of its own beside it (search_index.py), filled by
a background thread, so tokenizing text never holds the ledger's write lock. The delete trigger keeps
only its rollup part; the file gets a `ledger_id` by which the index knows the ledger it belongs to.
PostgreSQL: the tsvector table stays, but the recorder only queues the new response ids in
`search_pending`; a background indexer (any replica) turns them into search rows.

Revision ID: 0003
Revises: 0002
"""

import importlib
import time
import uuid

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The rollup half of 0002's trigger, unchanged (alembic loads revisions by path, not as a package).
_usage_search = importlib.import_module("chatledger.store.migrations.versions.0002_usage_search")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    now = int(time.time() * 1000)
    op.execute(f"INSERT INTO metadata (key, value, updated_at) VALUES ('ledger_id', '{uuid.uuid4()}', {now}) "
               "ON CONFLICT (key) DO NOTHING")
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS responses_forget")
        op.execute(f"""
            CREATE TRIGGER responses_forget AFTER DELETE ON responses
            BEGIN
              {_usage_search._forget_usage(sqlite)};
            END
        """)
        op.execute("DROP TABLE IF EXISTS search_index")
        op.execute("DELETE FROM metadata WHERE key = 'search_indexed_through'")
    else:
        op.execute("CREATE TABLE search_pending (id BIGINT PRIMARY KEY)")
        op.execute("INSERT INTO search_pending (id) SELECT r.id FROM responses r "
                   "WHERE NOT EXISTS (SELECT 1 FROM search_index s WHERE s.id = r.id)")
    op.execute(f"UPDATE metadata SET value = '3', updated_at = {now} WHERE key = 'schema_version'")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE VIRTUAL TABLE search_index USING fts5("
                   "prompt, response, tokenize = 'unicode61 remove_diacritics 2')")
        op.execute("DROP TRIGGER IF EXISTS responses_forget")
        op.execute(f"""
            CREATE TRIGGER responses_forget AFTER DELETE ON responses
            BEGIN
              DELETE FROM search_index WHERE rowid = OLD.id;
              {_usage_search._forget_usage(sqlite)};
            END
        """)
    else:
        op.execute("DROP TABLE IF EXISTS search_pending")
    op.execute("UPDATE metadata SET value = '2' WHERE key = 'schema_version'")
