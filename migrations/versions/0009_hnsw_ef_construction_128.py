"""HNSW indexes link new rows with ef_construction 128 (was pgvector's default, 64).

At 64, every build of bench/search/search.py's catalog (100,000 rows in 200 clusters) left one or two
clusters so poorly linked that an unfiltered search at ef_search 200 found none of their rows'
neighbours; at 128 none in four builds (bench/search/index_build.py, docs/benchmarks.md). New models'
indexes are created with 128 (``imgsearch.db.vector_index.HNSW_EF_CONSTRUCTION``); this sets it on
the indexes of the models already registered, so the rows written from now on are linked with
it. ``ALTER INDEX ... SET`` changes the index's options only (a ShareUpdateExclusiveLock: searches
and writes go on). The graph already built keeps its links until it is rebuilt, which
``imgsearch model reindex`` does without blocking searches or writes (``REINDEX CONCURRENTLY``
can't run inside a migration's transaction).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _set_ef_construction(value: int) -> None:
    conn = op.get_bind()
    for model_id in conn.execute(text("SELECT id FROM imgsearch.models ORDER BY id")).scalars():
        # ids are integers from our own table: safe to write into the statement
        op.execute(
            f"ALTER INDEX IF EXISTS imgsearch.embeddings_hnsw_m{int(model_id)} "
            f"SET (ef_construction = {int(value)})"
        )


def upgrade() -> None:
    _set_ef_construction(128)


def downgrade() -> None:
    _set_ef_construction(64)
