"""A shop's price range reads an index: embeddings and products carry their price as a ``bigint``
too, ``price_units`` (ten-thousandths, numeric(14, 4)'s scale, generated from ``price``), and the
price indexes hold it in place of ``price``.

Under a shop's row-level security PostgreSQL keeps a condition that isn't leakproof out of an
index's condition, ahead of the policy's; ``numeric``'s comparisons aren't leakproof, ``bigint``'s
are. So a shop's price range was a filter on every row of the shop (or of its category) that the
counts, the exact scan, the totals and the facets read: 32x the same range on the price in units
at 100k rows (bench/search/price_plans.py). On ``price_units`` it is an index condition:
``embeddings (model_id, tenant, category, price_units)`` reads a shop's range within each of its
categories (PostgreSQL 18's skip scan), and a shop's category's range directly; ``products
(tenant, price_units)`` a shop's range for its totals, facets and words. It takes a column of its
own: an expression index on ``(price * 10000)::bigint`` would need the cast in the condition,
which isn't leakproof either, and marking ``numeric``'s operators leakproof needs a superuser and
changes a system catalog.

The columns are generated (stored), as the products' text columns are (migration 0020):
PostgreSQL computes an embedding's after the trigger that gives it its product's price (migration
0004), so the two can't disagree and nothing writes them. The console's ``imgsearch._search``,
``imgsearch._lexical`` and ``imgsearch.facets`` filter on them, their bounds rounded inwards to
four decimals and clamped to numeric(14, 4)'s range, as the library's are
(``imgsearch.search.Filters``). ``price`` stays: hits, facets' buckets and users' SQL read it.

Adding a stored column rewrites the table and rebuilds its indexes, the HNSW graphs included,
while the migration holds it (searches wait): 61 s at 100k rows on the dev machine, about the
graph's build alone (docs/benchmarks.md, "Price filters"). It sets ``maintenance_work_mem`` for
the rebuild from the largest graph's size, as a bulk import does (a graph that doesn't fit in it
builds several times slower). Filling a plain column on embeddings by ``UPDATE`` took 158 s, holding
the table as well (``ADD COLUMN`` does), and left every graph with a dead entry per row (the
table and its indexes grew from 411 to 615 MB).

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

# a NaN price gives NULL: products' check (migration 0017) then refuses it by name, where the
# cast, computed before any check, would fail unnamed (a bigint can't hold NaN)
UNITS = "(nullif(price, 'NaN') * 10000)::bigint"
# the console's price conditions, by function, as before and after: the bounds rounded inwards to
# four decimals and clamped to numeric(14, 4)'s range (every stored price is below 1e10), which
# bigint holds
MIN, MAX = "ceil(least(greatest({}, -1e10), 1e10) * 10000)::bigint", "floor(least(greatest({}, -1e10), 1e10) * 10000)::bigint"
FUNCTIONS = {
    "imgsearch._search(halfvec, integer, text, text, numeric, numeric, bigint, bigint)": (
        ("e.price >= $3)", f"e.price_units >= {MIN.format('$3')})"),
        ("e.price <= $4)", f"e.price_units <= {MAX.format('$4')})"),
    ),
    "imgsearch._lexical(text, integer, text, text, numeric, numeric)": (
        ("p.price >= _lexical.price_min)", f"p.price_units >= {MIN.format('_lexical.price_min')})"),
        ("p.price <= _lexical.price_max)", f"p.price_units <= {MAX.format('_lexical.price_max')})"),
    ),
    "imgsearch.facets(text, text, text, numeric, numeric)": (
        ("p.price >= price_min)", f"p.price_units >= {MIN.format('price_min')})"),
        ("p.price <= price_max)", f"p.price_units <= {MAX.format('price_max')})"),
    ),
}
# (table, index, columns): the price indexes, on price before and on price_units after
INDEXES = (
    ("embeddings", "embeddings_category_price_idx", "model_id, category, {}"),
    ("embeddings", "embeddings_price_idx", "model_id, {}"),
    ("embeddings", "embeddings_tenant_category_price_idx", "model_id, tenant, category, {}"),
    ("products", "products_tenant_price_idx", "tenant, {}"),
    ("products", "products_price_idx", "{}"),
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


def _console_filters(after: bool) -> None:
    """Rewrite the console functions' price conditions (to ``price_units`` when ``after``)."""
    for function, edits in FUNCTIONS.items():
        definition = f"pg_get_functiondef('{function}'::regprocedure)"
        for old, new in edits:
            definition = f"replace({definition}, '{old if after else new}', '{new if after else old}')"
        op.execute(f"DO $$ BEGIN EXECUTE {definition}; END $$")


def _indexes(column: str) -> None:
    for table, name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON imgsearch.{table} ({columns.format(column)})")


def upgrade() -> None:
    op.execute(REBUILD_MEMORY)
    # the price indexes go first: each table's rewrite would rebuild them only to drop them
    for _, name, _ in INDEXES:
        op.execute(f"DROP INDEX imgsearch.{name}")
    for table in ("products", "embeddings"):
        op.execute(f"ALTER TABLE imgsearch.{table} ADD COLUMN price_units bigint GENERATED ALWAYS AS ({UNITS}) STORED")
    _indexes("price_units")
    op.execute("ANALYZE imgsearch.products, imgsearch.embeddings")  # the new columns' statistics
    _console_filters(after=True)


def downgrade() -> None:
    _console_filters(after=False)
    for table in ("products", "embeddings"):  # their indexes on it go with it
        op.execute(f"ALTER TABLE imgsearch.{table} DROP COLUMN price_units")
    _indexes("price")
