"""A shop's search within a category reads one index: embeddings (model_id, tenant, category).

A search with a tenant and a category (or a list of them) was planned for each search's values
(about 1 ms, a third of a search): with one index per column, which one leads depends on the
values (a small shop's share of a category every shop sells, or a big shop's rare category). One
index on both serves every pair alike, so the statement can run on the plan PostgreSQL caches
(``imgsearch.search.Filters.plans_alike``). It replaces ``(model_id, tenant)``, its prefix, so
tenant-only filters read it as before and writes keep the same number of indexes.

``CREATE INDEX`` holds off writes to embeddings (not reads) while it builds: a B-tree of two
short text columns, seconds for millions of rows. imgsearch's migrations run in one transaction,
so it can't be built ``CONCURRENTLY`` here.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX embeddings_tenant_category_idx ON imgsearch.embeddings (model_id, tenant, category)"
    )
    op.execute("DROP INDEX imgsearch.embeddings_tenant_idx")


def downgrade() -> None:
    op.execute("CREATE INDEX embeddings_tenant_idx ON imgsearch.embeddings (model_id, tenant)")
    op.execute("DROP INDEX imgsearch.embeddings_tenant_category_idx")
