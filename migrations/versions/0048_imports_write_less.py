"""A bulk import's writes cost less: new facet members take their values as they are made, and
the import gives its embeddings rows their filter columns (issue 72: bulk import within 1.3x
plain pgvector's ``COPY`` + ``CREATE INDEX``).

* ``imgsearch._facets_follow`` (migration 0039) inserted each new ``facet_members`` key empty,
  then updated it with its product's values and counted it. The update rewrote every key just
  inserted, and found them by ``tenant IS NULL``: once statistics say no key is empty (any
  analysed catalog), the planner may take that index scan for one row and loop over it, which
  is quadratic; one 100,000-row insert ran for five minutes before it was stopped. A key now
  takes its product's values in the insert and is counted from its ``RETURNING``. A key made
  after waiting for a concurrent change of its product read the product before the change
  committed, so the statement after the wait now moves any key whose values aren't its
  product's (or that isn't counted yet) to the product's, counting off and on; it finds them
  by their keys, and the move is the rare case.
* The filter columns' row trigger (migration 0004), which looks each new row's product up, now
  fires on insert only for a row that gives neither column (``embeddings_product_filters_added``,
  ``WHEN``); on update it is as before (``embeddings_product_filters``). A row that gives them is
  checked by the statement trigger of migration 0046, which corrects any that differ from its
  product. The bulk import gives them for each new image's first product: it holds its
  products' rows locked from their upsert, so the values it read then are theirs until it
  commits (about 1.2 s of 14-16 s at 100,000 rows). Citus mode keeps the trigger for every insert
  (no recheck runs on a cluster): :func:`imgsearch.db.citus.distribute` makes it so, and on a
  catalog distributed already this migration does.

Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0048
Revises: 0047
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0048"
down_revision: str | None = "0047"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION imgsearch._facets_follow(products bigint[], models smallint[], deltas integer[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- each (product, model)'s number of rows moves by its delta; its member row is locked until
    -- commit, keys in order (two statements of the same products never wait in a circle). A key
    -- made now takes its product's values and is counted under them; one left with no row is
    -- counted off under the values it was counted with.
    WITH changed AS (
        SELECT c.product_pk, c.model_id, c.delta, p.tenant, p.category, p.brand, p.price, p.attributes
        FROM unnest(products, models, deltas) AS c(product_pk, model_id, delta)
        LEFT JOIN imgsearch.products p ON p.id = c.product_pk
        WHERE c.delta <> 0
        ORDER BY c.product_pk, c.model_id
    ), kept AS (
        INSERT INTO imgsearch.facet_members AS m (product_pk, model_id, rows, tenant, category, brand, price, attributes)
        SELECT product_pk, model_id, delta, tenant, category, brand, price, attributes FROM changed
        ON CONFLICT (product_pk, model_id) DO UPDATE SET rows = m.rows + EXCLUDED.rows
        RETURNING WITH (OLD AS was, NEW AS now)
            was.product_pk IS NULL AS made, now.rows AS left_rows, now.model_id,
            was.tenant AS old_tenant, was.category AS old_category, was.brand AS old_brand,
            was.price AS old_price, was.attributes AS old_attributes,
            now.tenant, now.category, now.brand, now.price, now.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT moved.tenant, moved.model_id, f.facet, f.key, f.value, sum(moved.n)
    FROM (SELECT k.tenant, k.model_id, k.category, k.brand, k.price, k.attributes, 1 AS n
          FROM kept k WHERE k.made AND k.left_rows > 0 AND k.tenant IS NOT NULL
          UNION ALL
          SELECT k.old_tenant, k.model_id, k.old_category, k.old_brand, k.old_price, k.old_attributes, -1
          FROM kept k WHERE NOT k.made AND k.left_rows <= 0 AND k.old_tenant IS NOT NULL) AS moved
    CROSS JOIN LATERAL imgsearch._facet_values(moved.category, moved.brand, moved.price, moved.attributes) f
    GROUP BY 1, 2, 3, 4, 5
    HAVING sum(moved.n) <> 0;
    DELETE FROM imgsearch.facet_members m USING unnest(products, models) AS c(product_pk, model_id)
    WHERE m.product_pk = c.product_pk AND m.model_id = c.model_id AND m.rows <= 0;
    -- read again after any wait above: a key made after waiting for a concurrent change of its
    -- product (which took that change's values as they were before it), or one not yet counted,
    -- moves to the values its product has now (the check alone reads the keys and their
    -- products; the move is the rare case)
    WITH moved AS (
        UPDATE imgsearch.facet_members m
        SET tenant = p.tenant, category = p.category, brand = p.brand, price = p.price, attributes = p.attributes
        FROM unnest(products, models) AS c(product_pk, model_id), imgsearch.products p
        WHERE m.product_pk = c.product_pk AND m.model_id = c.model_id AND p.id = m.product_pk
          AND (m.tenant, m.category, m.brand, m.price, m.attributes)
              IS DISTINCT FROM (p.tenant, p.category, p.brand, p.price, p.attributes)
        RETURNING OLD.tenant AS old_tenant, OLD.category AS old_category, OLD.brand AS old_brand,
            OLD.price AS old_price, OLD.attributes AS old_attributes,
            NEW.model_id, NEW.tenant, NEW.category, NEW.brand, NEW.price, NEW.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT moved.tenant, moved.model_id, f.facet, f.key, f.value, sum(moved.n)
    FROM (SELECT m.old_tenant AS tenant, m.model_id, m.old_category AS category, m.old_brand AS brand,
                 m.old_price AS price, m.old_attributes AS attributes, -1 AS n
          FROM moved m WHERE m.old_tenant IS NOT NULL
          UNION ALL
          SELECT m.tenant, m.model_id, m.category, m.brand, m.price, m.attributes, 1
          FROM moved m WHERE m.tenant IS NOT NULL) AS moved
    CROSS JOIN LATERAL imgsearch._facet_values(moved.category, moved.brand, moved.price, moved.attributes) f
    GROUP BY 1, 2, 3, 4, 5
    HAVING sum(moved.n) <> 0;
END
$function$;
"""

# migration 0039's
PREVIOUS = r"""
CREATE OR REPLACE FUNCTION imgsearch._facets_follow(products bigint[], models smallint[], deltas integer[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- each (product, model)'s number of rows moves by its delta; its member row is locked until
    -- commit, keys in order (two statements of the same products never wait in a circle). One
    -- left with no row is counted off under the values it was counted with.
    WITH changed AS (
        SELECT c.product_pk, c.model_id, c.delta
        FROM unnest(products, models, deltas) AS c(product_pk, model_id, delta)
        WHERE c.delta <> 0
        ORDER BY c.product_pk, c.model_id
    ), kept AS (
        INSERT INTO imgsearch.facet_members AS m (product_pk, model_id, rows)
        SELECT product_pk, model_id, delta FROM changed
        ON CONFLICT (product_pk, model_id) DO UPDATE SET rows = m.rows + EXCLUDED.rows
        RETURNING WITH (OLD AS was, NEW AS now)
            now.rows AS left_rows, now.model_id, was.tenant, was.category, was.brand, was.price, was.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT k.tenant, k.model_id, f.facet, f.key, f.value, -count(*)
    FROM kept k CROSS JOIN LATERAL imgsearch._facet_values(k.category, k.brand, k.price, k.attributes) f
    WHERE k.left_rows <= 0 AND k.tenant IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5;
    DELETE FROM imgsearch.facet_members m USING unnest(products, models) AS c(product_pk, model_id)
    WHERE m.product_pk = c.product_pk AND m.model_id = c.model_id AND m.rows <= 0;
    -- a product counted for the first time, under its values as they are now: this statement
    -- reads after any wait above, so a concurrent change of the product committed is seen
    WITH counted AS (
        UPDATE imgsearch.facet_members m
        SET tenant = p.tenant, category = p.category, brand = p.brand, price = p.price, attributes = p.attributes
        FROM unnest(products, models) AS c(product_pk, model_id), imgsearch.products p
        WHERE m.product_pk = c.product_pk AND m.model_id = c.model_id AND m.tenant IS NULL AND p.id = m.product_pk
        RETURNING m.tenant, m.model_id, m.category, m.brand, m.price, m.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT c.tenant, c.model_id, f.facet, f.key, f.value, count(*)
    FROM counted c CROSS JOIN LATERAL imgsearch._facet_values(c.category, c.brand, c.price, c.attributes) f
    GROUP BY 1, 2, 3, 4, 5;
END
$function$;
"""

# migration 0004's, on insert and update alike (Citus mode keeps it: imgsearch.db.citus)
ROW_TRIGGER = citus.PRODUCT_FILTERS_TRIGGER
TRIGGERS = (
    "CREATE TRIGGER embeddings_product_filters BEFORE UPDATE OF product_pk, category, price "
    "ON imgsearch.embeddings FOR EACH ROW EXECUTE FUNCTION imgsearch.embedding_takes_product_filters()",
    "CREATE TRIGGER embeddings_product_filters_added BEFORE INSERT ON imgsearch.embeddings FOR EACH ROW "
    "WHEN (new.category IS NULL AND new.price IS NULL) "
    "EXECUTE FUNCTION imgsearch.embedding_takes_product_filters()",
)


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, FUNCTION)
    if citus.is_distributed(conn):  # a cluster keeps the trigger on every insert
        return
    op.execute("DROP TRIGGER embeddings_product_filters ON imgsearch.embeddings")
    for statement in TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    conn = op.get_bind()
    if not citus.is_distributed(conn):
        op.execute("DROP TRIGGER embeddings_product_filters_added ON imgsearch.embeddings")
        op.execute("DROP TRIGGER embeddings_product_filters ON imgsearch.embeddings")
        op.execute(ROW_TRIGGER)
    definitions.run(conn, PREVIOUS)
