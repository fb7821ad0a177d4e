"""The facet counts' triggers expand alike rows once (issue 72: bulk import within 1.3x plain
pgvector's ``COPY`` + ``CREATE INDEX``).

Each statement that moved facet counts expanded every product it counted on or off into its
facet values (``imgsearch._facet_values``: the total, category, brand, each attribute, and ten
price buckets) and summed them: 13 rows a product for the import's test data, 1.3M at 100,000 new
products, about 1.0 s of the embeddings' insert (``EXPLAIN ANALYZE`` of the statement, through
``auto_explain``). ``imgsearch._facet_counts_moved`` groups the rows by what each part of the
values reads before it expands them: the total, category and brand by the product's category and
brand, the attributes by the document, the price's buckets by its whole units. 0.2 s for the same
rows; the counts are the same (the test compares them with the expansion row by row).

``imgsearch._facets_follow`` (its two statements) and ``imgsearch._facets_follow_products`` (an
update feed's products) count through it. Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0052
Revises: 0051
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0052"
down_revision: str | None = "0051"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = r"""
CREATE OR REPLACE FUNCTION imgsearch._facet_counts_moved(tenants text[], models smallint[], categories text[], brands text[], prices numeric[], attributes jsonb[], ns integer[])
 RETURNS TABLE(tenant text, model_id smallint, facet text, key text, value text, n bigint)
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- the counts that products' values move by: each row (tenants[i], models[i], ...) counts a
    -- product's values on (ns[i] 1) or off (-1) under a model. What a product counts under is
    -- imgsearch._facet_values; the rows are grouped first by what each part of it reads, so that
    -- rows alike are expanded once: the total, category and brand by those two, the attributes
    -- by the document, the price's buckets by its whole units (a bucket, div(price, 10^j),
    -- truncates toward zero as trunc(price) does: each is the same for both)
    WITH moved AS (
        SELECT * FROM unnest(tenants, models, categories, brands, prices, attributes, ns)
            AS m(tenant, model_id, category, brand, price, attributes, n)
        WHERE m.tenant IS NOT NULL
    ), parts AS (
        SELECT 'labels' AS part, m.tenant, m.model_id, m.category, m.brand, NULL::numeric AS price,
               NULL::jsonb AS attributes, sum(m.n) AS n
        FROM moved m GROUP BY m.tenant, m.model_id, m.category, m.brand HAVING sum(m.n) <> 0
        UNION ALL
        SELECT 'attributes', m.tenant, m.model_id, NULL, NULL, NULL, m.attributes, sum(m.n)
        FROM moved m WHERE m.attributes IS NOT NULL
        GROUP BY m.tenant, m.model_id, m.attributes HAVING sum(m.n) <> 0
        UNION ALL
        SELECT 'price', m.tenant, m.model_id, NULL, NULL, trunc(m.price), NULL, sum(m.n)
        FROM moved m WHERE m.price IS NOT NULL
        GROUP BY m.tenant, m.model_id, trunc(m.price) HAVING sum(m.n) <> 0
    )
    SELECT p.tenant, p.model_id, f.facet, f.key, f.value, sum(p.n)
    FROM parts p CROSS JOIN LATERAL imgsearch._facet_values(p.category, p.brand, p.price, p.attributes) f
    WHERE f.facet <> 'total' OR p.part = 'labels'  -- each product once in the total
    GROUP BY 1, 2, 3, 4, 5
    HAVING sum(p.n) <> 0
$function$;
"""

FOLLOW = r"""
CREATE OR REPLACE FUNCTION imgsearch._facets_follow(products bigint[], models smallint[], deltas integer[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    unsure_products bigint[];
    unsure_models smallint[];
BEGIN
    -- each (product, model)'s number of rows moves by its delta; its member row is locked until
    -- commit, keys in order (two statements of the same products never wait in a circle). A key
    -- made now takes its product's values and is counted under them; one left with no row is
    -- counted off under the values it was counted with. The keys to read again below: all but
    -- those made now of a product this transaction wrote (its row is ours until commit, so the
    -- values just read stay its values: a bulk import's or an upload's new products)
    WITH changed AS (
        SELECT c.product_pk, c.model_id, c.delta, p.tenant, p.category, p.brand, p.price, p.attributes,
               coalesce(p.xmin = pg_current_xact_id()::xid, false) AS ours
        FROM unnest(products, models, deltas) AS c(product_pk, model_id, delta)
        LEFT JOIN imgsearch.products p ON p.id = c.product_pk
        WHERE c.delta <> 0
        ORDER BY c.product_pk, c.model_id
    ), kept AS (
        INSERT INTO imgsearch.facet_members AS m (product_pk, model_id, rows, tenant, category, brand, price, attributes)
        SELECT product_pk, model_id, delta, tenant, category, brand, price, attributes FROM changed
        ON CONFLICT (product_pk, model_id) DO UPDATE SET rows = m.rows + EXCLUDED.rows
        RETURNING WITH (OLD AS was, NEW AS now)
            was.product_pk IS NULL AS made, now.rows AS left_rows, now.product_pk, now.model_id,
            was.tenant AS old_tenant, was.category AS old_category, was.brand AS old_brand,
            was.price AS old_price, was.attributes AS old_attributes,
            now.tenant, now.category, now.brand, now.price, now.attributes
    ), counted AS (
        INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
        SELECT f.* FROM (
            SELECT array_agg(moved.tenant) AS tenants, array_agg(moved.model_id) AS models,
                   array_agg(moved.category) AS categories, array_agg(moved.brand) AS brands,
                   array_agg(moved.price) AS prices, array_agg(moved.attributes) AS attributes,
                   array_agg(moved.n) AS ns
            FROM (SELECT k.tenant, k.model_id, k.category, k.brand, k.price, k.attributes, 1 AS n
                  FROM kept k WHERE k.made AND k.left_rows > 0 AND k.tenant IS NOT NULL
                  UNION ALL
                  SELECT k.old_tenant, k.model_id, k.old_category, k.old_brand, k.old_price, k.old_attributes, -1
                  FROM kept k WHERE NOT k.made AND k.left_rows <= 0 AND k.old_tenant IS NOT NULL) AS moved
        ) AS given
        CROSS JOIN LATERAL imgsearch._facet_counts_moved(given.tenants, given.models, given.categories, given.brands,
                                                     given.prices, given.attributes, given.ns) f
    )
    SELECT array_agg(u.product_pk), array_agg(u.model_id) INTO unsure_products, unsure_models
    FROM (SELECT k.product_pk, k.model_id FROM kept k WHERE NOT k.made
          UNION SELECT c.product_pk, c.model_id FROM changed c WHERE NOT c.ours) AS u;
    -- a key is left with no row only by a negative delta (one that grew never reaches zero)
    DELETE FROM imgsearch.facet_members m USING unnest(products, models, deltas) AS c(product_pk, model_id, delta)
    WHERE c.delta < 0 AND m.product_pk = c.product_pk AND m.model_id = c.model_id AND m.rows <= 0;
    IF unsure_products IS NULL THEN
        RETURN;
    END IF;
    -- read again after any wait above: a key made after waiting for a concurrent change of its
    -- product (which took that change's values as they were before it), or one not yet counted,
    -- moves to the values its product has now (the check alone reads the keys and their
    -- products; the move is the rare case)
    WITH moved AS (
        UPDATE imgsearch.facet_members m
        SET tenant = p.tenant, category = p.category, brand = p.brand, price = p.price, attributes = p.attributes
        FROM unnest(unsure_products, unsure_models) AS c(product_pk, model_id), imgsearch.products p
        WHERE m.product_pk = c.product_pk AND m.model_id = c.model_id AND p.id = m.product_pk
          AND (m.tenant, m.category, m.brand, m.price, m.attributes)
              IS DISTINCT FROM (p.tenant, p.category, p.brand, p.price, p.attributes)
        RETURNING OLD.tenant AS old_tenant, OLD.category AS old_category, OLD.brand AS old_brand,
            OLD.price AS old_price, OLD.attributes AS old_attributes,
            NEW.model_id, NEW.tenant, NEW.category, NEW.brand, NEW.price, NEW.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT f.* FROM (
        SELECT array_agg(moved.tenant) AS tenants, array_agg(moved.model_id) AS models,
               array_agg(moved.category) AS categories, array_agg(moved.brand) AS brands,
               array_agg(moved.price) AS prices, array_agg(moved.attributes) AS attributes,
               array_agg(moved.n) AS ns
        FROM (SELECT m.old_tenant AS tenant, m.model_id, m.old_category AS category, m.old_brand AS brand,
                     m.old_price AS price, m.old_attributes AS attributes, -1 AS n
              FROM moved m WHERE m.old_tenant IS NOT NULL
              UNION ALL
              SELECT m.tenant, m.model_id, m.category, m.brand, m.price, m.attributes, 1
              FROM moved m WHERE m.tenant IS NOT NULL) AS moved
    ) AS given
    CROSS JOIN LATERAL imgsearch._facet_counts_moved(given.tenants, given.models, given.categories, given.brands,
                                                 given.prices, given.attributes, given.ns) f;
END
$function$;
"""

FOLLOW_PRODUCTS = r"""
CREATE OR REPLACE FUNCTION imgsearch._facets_follow_products()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- a product whose counted values changed: its key under every model is upserted (so a
    -- concurrent first row of it, not yet committed, is waited for), the old values counted off
    -- and the new ones on where it is counted; the keys made only to wait are removed
    WITH changed AS (
        SELECT a.id, a.tenant, a.category, a.brand, a.price, a.attributes
        FROM new_products a JOIN old_products b ON b.id = a.id
        WHERE (a.tenant, a.category, a.brand, a.price, a.attributes)
              IS DISTINCT FROM (b.tenant, b.category, b.brand, b.price, b.attributes)
    ), kept AS (
        INSERT INTO imgsearch.facet_members AS m (product_pk, model_id, rows, tenant, category, brand, price, attributes)
        SELECT c.id, md.id, 0, c.tenant, c.category, c.brand, c.price, c.attributes
        FROM changed c CROSS JOIN imgsearch.models md
        ORDER BY c.id, md.id
        ON CONFLICT (product_pk, model_id) DO UPDATE SET tenant = EXCLUDED.tenant, category = EXCLUDED.category,
            brand = EXCLUDED.brand, price = EXCLUDED.price, attributes = EXCLUDED.attributes
        RETURNING WITH (OLD AS was, NEW AS now)
            now.model_id, now.rows, was.tenant AS old_tenant, was.category AS old_category,
            was.brand AS old_brand, was.price AS old_price, was.attributes AS old_attributes,
            now.tenant, now.category, now.brand, now.price, now.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT f.* FROM (
        SELECT array_agg(moved.tenant) AS tenants, array_agg(moved.model_id) AS models,
               array_agg(moved.category) AS categories, array_agg(moved.brand) AS brands,
               array_agg(moved.price) AS prices, array_agg(moved.attributes) AS attributes,
               array_agg(moved.n) AS ns
        FROM (SELECT k.old_tenant AS tenant, k.model_id, k.old_category AS category, k.old_brand AS brand,
                     k.old_price AS price, k.old_attributes AS attributes, -1 AS n
              FROM kept k WHERE k.rows > 0 AND k.old_tenant IS NOT NULL
              UNION ALL
              SELECT k.tenant, k.model_id, k.category, k.brand, k.price, k.attributes, 1
              FROM kept k WHERE k.rows > 0 AND k.old_tenant IS NOT NULL) AS moved
    ) AS given
    CROSS JOIN LATERAL imgsearch._facet_counts_moved(given.tenants, given.models, given.categories, given.brands,
                                                 given.prices, given.attributes, given.ns) f;
    DELETE FROM imgsearch.facet_members m USING new_products a JOIN old_products b ON b.id = a.id
    WHERE m.product_pk = a.id AND m.rows = 0
      AND (a.tenant, a.category, a.brand, a.price, a.attributes)
          IS DISTINCT FROM (b.tenant, b.category, b.brand, b.price, b.attributes);
    RETURN NULL;
END
$function$;
"""

PREVIOUS_FOLLOW = r"""
CREATE OR REPLACE FUNCTION imgsearch._facets_follow(products bigint[], models smallint[], deltas integer[])
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    unsure_products bigint[];
    unsure_models smallint[];
BEGIN
    -- each (product, model)'s number of rows moves by its delta; its member row is locked until
    -- commit, keys in order (two statements of the same products never wait in a circle). A key
    -- made now takes its product's values and is counted under them; one left with no row is
    -- counted off under the values it was counted with. The keys to read again below: all but
    -- those made now of a product this transaction wrote (its row is ours until commit, so the
    -- values just read stay its values: a bulk import's or an upload's new products)
    WITH changed AS (
        SELECT c.product_pk, c.model_id, c.delta, p.tenant, p.category, p.brand, p.price, p.attributes,
               coalesce(p.xmin = pg_current_xact_id()::xid, false) AS ours
        FROM unnest(products, models, deltas) AS c(product_pk, model_id, delta)
        LEFT JOIN imgsearch.products p ON p.id = c.product_pk
        WHERE c.delta <> 0
        ORDER BY c.product_pk, c.model_id
    ), kept AS (
        INSERT INTO imgsearch.facet_members AS m (product_pk, model_id, rows, tenant, category, brand, price, attributes)
        SELECT product_pk, model_id, delta, tenant, category, brand, price, attributes FROM changed
        ON CONFLICT (product_pk, model_id) DO UPDATE SET rows = m.rows + EXCLUDED.rows
        RETURNING WITH (OLD AS was, NEW AS now)
            was.product_pk IS NULL AS made, now.rows AS left_rows, now.product_pk, now.model_id,
            was.tenant AS old_tenant, was.category AS old_category, was.brand AS old_brand,
            was.price AS old_price, was.attributes AS old_attributes,
            now.tenant, now.category, now.brand, now.price, now.attributes
    ), counted AS (
        INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
        SELECT moved.tenant, moved.model_id, f.facet, f.key, f.value, sum(moved.n)
        FROM (SELECT k.tenant, k.model_id, k.category, k.brand, k.price, k.attributes, 1 AS n
              FROM kept k WHERE k.made AND k.left_rows > 0 AND k.tenant IS NOT NULL
              UNION ALL
              SELECT k.old_tenant, k.model_id, k.old_category, k.old_brand, k.old_price, k.old_attributes, -1
              FROM kept k WHERE NOT k.made AND k.left_rows <= 0 AND k.old_tenant IS NOT NULL) AS moved
        CROSS JOIN LATERAL imgsearch._facet_values(moved.category, moved.brand, moved.price, moved.attributes) f
        GROUP BY 1, 2, 3, 4, 5
        HAVING sum(moved.n) <> 0
    )
    SELECT array_agg(u.product_pk), array_agg(u.model_id) INTO unsure_products, unsure_models
    FROM (SELECT k.product_pk, k.model_id FROM kept k WHERE NOT k.made
          UNION SELECT c.product_pk, c.model_id FROM changed c WHERE NOT c.ours) AS u;
    -- a key is left with no row only by a negative delta (one that grew never reaches zero)
    DELETE FROM imgsearch.facet_members m USING unnest(products, models, deltas) AS c(product_pk, model_id, delta)
    WHERE c.delta < 0 AND m.product_pk = c.product_pk AND m.model_id = c.model_id AND m.rows <= 0;
    IF unsure_products IS NULL THEN
        RETURN;
    END IF;
    -- read again after any wait above: a key made after waiting for a concurrent change of its
    -- product (which took that change's values as they were before it), or one not yet counted,
    -- moves to the values its product has now (the check alone reads the keys and their
    -- products; the move is the rare case)
    WITH moved AS (
        UPDATE imgsearch.facet_members m
        SET tenant = p.tenant, category = p.category, brand = p.brand, price = p.price, attributes = p.attributes
        FROM unnest(unsure_products, unsure_models) AS c(product_pk, model_id), imgsearch.products p
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

PREVIOUS_FOLLOW_PRODUCTS = r"""
CREATE OR REPLACE FUNCTION imgsearch._facets_follow_products()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- a product whose counted values changed: its key under every model is upserted (so a
    -- concurrent first row of it, not yet committed, is waited for), the old values counted off
    -- and the new ones on where it is counted; the keys made only to wait are removed
    WITH changed AS (
        SELECT a.id, a.tenant, a.category, a.brand, a.price, a.attributes
        FROM new_products a JOIN old_products b ON b.id = a.id
        WHERE (a.tenant, a.category, a.brand, a.price, a.attributes)
              IS DISTINCT FROM (b.tenant, b.category, b.brand, b.price, b.attributes)
    ), kept AS (
        INSERT INTO imgsearch.facet_members AS m (product_pk, model_id, rows, tenant, category, brand, price, attributes)
        SELECT c.id, md.id, 0, c.tenant, c.category, c.brand, c.price, c.attributes
        FROM changed c CROSS JOIN imgsearch.models md
        ORDER BY c.id, md.id
        ON CONFLICT (product_pk, model_id) DO UPDATE SET tenant = EXCLUDED.tenant, category = EXCLUDED.category,
            brand = EXCLUDED.brand, price = EXCLUDED.price, attributes = EXCLUDED.attributes
        RETURNING WITH (OLD AS was, NEW AS now)
            now.model_id, now.rows, was.tenant AS old_tenant, was.category AS old_category,
            was.brand AS old_brand, was.price AS old_price, was.attributes AS old_attributes,
            now.tenant, now.category, now.brand, now.price, now.attributes
    )
    INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
    SELECT moved.tenant, moved.model_id, f.facet, f.key, f.value, sum(moved.n)
    FROM (SELECT k.old_tenant AS tenant, k.model_id, k.old_category AS category, k.old_brand AS brand,
                 k.old_price AS price, k.old_attributes AS attributes, -1 AS n
          FROM kept k WHERE k.rows > 0 AND k.old_tenant IS NOT NULL
          UNION ALL
          SELECT k.tenant, k.model_id, k.category, k.brand, k.price, k.attributes, 1
          FROM kept k WHERE k.rows > 0 AND k.old_tenant IS NOT NULL) AS moved
    CROSS JOIN LATERAL imgsearch._facet_values(moved.category, moved.brand, moved.price, moved.attributes) f
    GROUP BY 1, 2, 3, 4, 5
    HAVING sum(moved.n) <> 0;
    DELETE FROM imgsearch.facet_members m USING new_products a JOIN old_products b ON b.id = a.id
    WHERE m.product_pk = a.id AND m.rows = 0
      AND (a.tenant, a.category, a.brand, a.price, a.attributes)
          IS DISTINCT FROM (b.tenant, b.category, b.brand, b.price, b.attributes);
    RETURN NULL;
END
$function$;
"""


def upgrade() -> None:
    for statement in (COUNTS, FOLLOW, FOLLOW_PRODUCTS):
        definitions.run(op.get_bind(), statement)


def downgrade() -> None:
    for statement in (PREVIOUS_FOLLOW, PREVIOUS_FOLLOW_PRODUCTS):
        definitions.run(op.get_bind(), statement)
    op.execute(
        "DROP FUNCTION imgsearch._facet_counts_moved(text[], smallint[], text[], text[], numeric[], jsonb[], integer[])"
    )
