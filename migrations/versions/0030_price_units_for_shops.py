"""A shop's price range reads an index: embeddings carry their price as a ``bigint`` too,
``price_units`` (ten-thousandths, numeric(14, 4)'s scale, generated from ``price``), and the filter
indexes hold it in place of ``price``.

Under a shop's row-level security PostgreSQL keeps a condition that isn't leakproof out of an
index's condition, ahead of the policy's; ``numeric``'s comparisons aren't leakproof, ``bigint``'s
are. So a shop's price range was a filter on every row of the shop (or of its category) that the
counts and the exact scan read, 34x the same range without a shop at 100k rows
(bench/search/price_plans.py). On ``price_units`` it is an index condition: ``(model_id, tenant,
category, price_units)`` reads a shop's range within each of its categories (PostgreSQL 18's skip
scan), and a shop's category's range directly. It takes a column of its own: an expression index
on ``(price * 10000)::bigint`` would need the cast in the condition, which isn't leakproof either,
and marking ``numeric``'s operators leakproof needs a superuser and changes a system catalog.

The column is generated (stored): PostgreSQL computes it after the trigger that gives an
embedding its product's price (migration 0004), so the two can't disagree and nothing writes it.
The console's ``imgsearch._search`` filters on it, its bounds rounded inwards to four decimals and
clamped to numeric(14, 4)'s range, as the library's are (``imgsearch.search.Filters``). ``price``
stays: the hits and the lexical side read it.

Adding a stored column rewrites the embeddings table and rebuilds its indexes, the HNSW graphs
included, while the migration holds the table (searches wait): 63 s at 100k rows on the dev
machine, about the graph's build alone (docs/benchmarks.md, "Price filters"). It
sets ``maintenance_work_mem`` for the rebuild from the largest graph's size, as a bulk import does
(a graph that doesn't fit in it builds several times slower). Filling a plain column by ``UPDATE``
instead took 158 s, holding the table as well (``ADD COLUMN`` does), and left every graph with a
dead entry per row (the table and its indexes grew from 411 to 615 MB).

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_FUNCTION = "imgsearch._search(halfvec, integer, text, text, numeric, numeric, bigint, bigint)"
# the console's bounds, as in its dynamic SQL before and after: rounded inwards to four decimals,
# and clamped to numeric(14, 4)'s range (every stored price is below 1e10), which bigint holds
BOUNDS = (
    ("e.price >= $3)", "e.price_units >= ceil(least(greatest($3, -1e10), 1e10) * 10000)::bigint)"),
    ("e.price <= $4)", "e.price_units <= floor(least(greatest($4, -1e10), 1e10) * 10000)::bigint)"),
)
INDEXES = (
    ("embeddings_category_price_idx", "model_id, category, {}"),
    ("embeddings_price_idx", "model_id, {}"),
    ("embeddings_tenant_category_price_idx", "model_id, tenant, category, {}"),
)
# memory to rebuild the largest HNSW graph in one go: its size on disk and half again (a bulk
# import's estimate, imgsearch.ingest.bulk.auto_maintenance_work_mem, comes to 1.26x at 100k
# rows), at least PostgreSQL's default and at most the import's ceiling, 8 GB
REBUILD_MEMORY = """
SELECT set_config('maintenance_work_mem', (greatest(64, least(8192,
    coalesce(max(pg_relation_size(i.indexrelid)), 0) * 3 / 2 / 1048576 + 1)))::text || 'MB', true)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE i.indrelid = 'imgsearch.embeddings'::regclass AND a.amname = 'hnsw'
"""


def _search_filters(edits: Sequence[tuple[str, str]]) -> None:
    """Rewrite the console search function's price conditions, each ``(old, new)``."""
    definition = f"pg_get_functiondef('{SEARCH_FUNCTION}'::regprocedure)"
    for old, new in edits:
        definition = f"replace({definition}, '{old}', '{new}')"
    op.execute(f"DO $$ BEGIN EXECUTE {definition}; END $$")


def _indexes(column: str) -> None:
    for name, columns in INDEXES:
        op.execute(f"DROP INDEX imgsearch.{name}")
        op.execute(f"CREATE INDEX {name} ON imgsearch.embeddings ({columns.format(column)})")


def upgrade() -> None:
    op.execute(REBUILD_MEMORY)
    # the filter indexes on the price go first: the rewrite would rebuild them only to drop them
    for name, _ in INDEXES:
        op.execute(f"DROP INDEX imgsearch.{name}")
    op.execute(
        "ALTER TABLE imgsearch.embeddings ADD COLUMN price_units bigint"
        " GENERATED ALWAYS AS ((price * 10000)::bigint) STORED"
    )
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON imgsearch.embeddings ({columns.format('price_units')})")
    op.execute("ANALYZE imgsearch.embeddings")  # the new column's statistics, for the first plans
    _search_filters(BOUNDS)


def downgrade() -> None:
    _search_filters([(new, old) for old, new in BOUNDS])
    _indexes("price")
    op.execute("ALTER TABLE imgsearch.embeddings DROP COLUMN price_units")
