"""An embeddings row checks less on the way in: a foreign key and an index that others imply go,
and a product's price buckets are divided by widths written out (issue 72: bulk import within
1.3x plain pgvector's ``COPY`` + ``CREATE INDEX``).

* ``embeddings_product_fkey`` ((product_pk, tenant) to products) is implied by the two keys the
  row keeps: ``embeddings_image_fkey`` gives the row its image's tenant, and
  ``embeddings_link_fkey`` ((image_id, product_pk) to image_products) its link, whose own keys
  hold that image and that product under one tenant. A product deleted still takes its rows:
  its links go with it (``ON DELETE CASCADE``), and each row with its link. Each key is a lookup
  and a row lock per row written: at 100,000 rows this one cost about 1 s of the insert's 8-11 s
  (bench/ingest/import_costs.py). The image key stays: ``Embedding.image`` joins by it.
* ``embeddings_image_id_idx`` (image_id) duplicates the primary key's first column since
  migration 0040 made it (image_id, product_pk, model_id, region); each row paid a second entry.
* ``imgsearch._facet_values`` gave a price ten buckets with ``power(10::numeric, j)`` per row and
  bucket; the widths are now a list of ten constants, the values the same (checked on 200,000
  prices, negative, NaN and the column's limits among them). The facet counts' trigger expands
  each new product into 13 rows: 0.96 s per 100,000 products before, 0.84 s now.

On a Citus cluster the same three changes apply (its link key carries the tenant already).

Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0050
Revises: 0049
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0050"
down_revision: str | None = "0049"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACET_VALUES = r"""
CREATE OR REPLACE FUNCTION imgsearch._facet_values(category text, brand text, price numeric, attributes jsonb)
 RETURNS TABLE(facet text, key text, value text)
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT 'total', '', ''
    UNION ALL SELECT 'category', '', category WHERE category IS NOT NULL
    UNION ALL SELECT 'brand', '', brand WHERE brand IS NOT NULL
    UNION ALL SELECT 'attribute', a.key, a.value #>> '{}'
        FROM jsonb_each(CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes END) AS a
        WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
    -- the price's bucket of each width 10^j: key j, value the price divided by 10^j, truncated
    UNION ALL SELECT 'price', w.j, div(price, w.width)::text
        FROM (VALUES ('0', 1::numeric), ('1', 10), ('2', 100), ('3', 1000), ('4', 10000), ('5', 100000),
                     ('6', 1000000), ('7', 10000000), ('8', 100000000), ('9', 1000000000)) AS w(j, width)
        WHERE price IS NOT NULL
$function$;
"""

PREVIOUS = r"""
CREATE OR REPLACE FUNCTION imgsearch._facet_values(category text, brand text, price numeric, attributes jsonb)
 RETURNS TABLE(facet text, key text, value text)
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT 'total', '', ''
    UNION ALL SELECT 'category', '', category WHERE category IS NOT NULL
    UNION ALL SELECT 'brand', '', brand WHERE brand IS NOT NULL
    UNION ALL SELECT 'attribute', a.key, a.value #>> '{}'
        FROM jsonb_each(CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes END) AS a
        WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
    UNION ALL SELECT 'price', j::text, div(price, power(10::numeric, j))::text
        FROM generate_series(0, 9) AS j WHERE price IS NOT NULL
$function$;
"""

PRODUCT_KEY = (
    "ALTER TABLE imgsearch.embeddings ADD CONSTRAINT embeddings_product_fkey "
    "FOREIGN KEY (product_pk, tenant) REFERENCES imgsearch.products (id, tenant) ON DELETE CASCADE"
)


def upgrade() -> None:
    op.execute("ALTER TABLE imgsearch.embeddings DROP CONSTRAINT embeddings_product_fkey")
    op.execute("DROP INDEX imgsearch.embeddings_image_id_idx")
    definitions.run(op.get_bind(), FACET_VALUES)


def downgrade() -> None:
    definitions.run(op.get_bind(), PREVIOUS)
    op.execute("CREATE INDEX embeddings_image_id_idx ON imgsearch.embeddings (image_id)")
    op.execute(PRODUCT_KEY)
