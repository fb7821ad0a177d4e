"""A category's price range reads one index: embeddings (model_id, category, price), and a shop's
category's price range (model_id, tenant, category, price).

A search with a price range and a category (or a list of them), with or without a tenant, was
planned for each search's values (0.7-1 ms, half of such a search): with one index per column,
which one leads depends on the values (a narrow range in a large category, or a category inside
a broad range), and a plan made without them read a broad range's whole price index (over 40x
the search planned for its values, bench/search/price_plans.py --before). An index on the category then the price serves every
pair alike, so the statement runs on the plan PostgreSQL caches
(``imgsearch.search.Filters.plans_alike``), and counts a category's price range from the index
alone. Each new index replaces its prefix, ``(model_id, category)`` and ``(model_id, tenant,
category)``: filters on those columns read it as before, and writes keep the same number of
indexes.

``CREATE INDEX`` holds off writes to embeddings (not reads) while it builds: B-trees of short text
columns and a number, seconds for millions of rows. imgsearch's migrations run in one
transaction, so they can't be built ``CONCURRENTLY`` here.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX embeddings_category_price_idx ON imgsearch.embeddings (model_id, category, price)"
    )
    op.execute("DROP INDEX imgsearch.embeddings_category_idx")
    op.execute(
        "CREATE INDEX embeddings_tenant_category_price_idx"
        " ON imgsearch.embeddings (model_id, tenant, category, price)"
    )
    op.execute("DROP INDEX imgsearch.embeddings_tenant_category_idx")


def downgrade() -> None:
    op.execute(
        "CREATE INDEX embeddings_tenant_category_idx ON imgsearch.embeddings (model_id, tenant, category)"
    )
    op.execute("DROP INDEX imgsearch.embeddings_tenant_category_price_idx")
    op.execute("CREATE INDEX embeddings_category_idx ON imgsearch.embeddings (model_id, category)")
    op.execute("DROP INDEX imgsearch.embeddings_category_price_idx")
