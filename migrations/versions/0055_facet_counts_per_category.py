"""Facet counts kept per category too: a shop's search in one category (or a list of them) reads its
facets from a few rows, not from each of its products (issue 72: facets within 3x a search).

A shop's facets came from the counts its triggers keep (migration 0039); a search filtered to a
category counted its match set in one pass over its products: 19.5 ms, 3.8x the search, for a 1%
category at 100k products, 170 ms (21.7x) at 1M (bench/search/facets_scale.py). Now every count
is kept twice: for the shop (``category`` NULL, as before) and for the product's category.

* ``facet_counts.category``: NULL for the shop's counts (every existing row), a category's name
  for that category's products; the index on (model_id, tenant) becomes (model_id, tenant,
  category, facet), so a read takes its scope's rows alone, and a total its total's rows alone
  (a shop's total read every count row of the shop: 3.5 ms over 12,000 rows right after an
  upload of 3,000 products, before a facets read folded them).
* ``facet_members_category_price_idx`` (model_id, tenant, category, price): a category's lowest
  and highest price, which its price buckets start from, are the first entries of its members
  (the shop's index, on (model_id, tenant, price), would be read up to the category's lowest
  price: under row-level security a price range can't be one of its conditions).
* ``imgsearch._facet_counts_moved`` groups each part of the values within its category and
  returns each count twice, with its scope (its return type changes: dropped and made again);
  ``imgsearch._facets_follow`` and ``imgsearch._facets_follow_products`` append the scope;
  ``imgsearch.compact_facet_counts`` folds per scope.
* The categories' counts of the products a catalog holds, written once its writers wait (their
  triggers upsert ``facet_members`` before they append counts: that lock first).

Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0055
Revises: 0054
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0055"
down_revision: str | None = "0054"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOVED_ARGS = "text[], smallint[], text[], text[], numeric[], jsonb[], integer[]"

# the writers' triggers upsert facet_members, then append facet_counts: locked in that order
LOCKS = """
LOCK TABLE imgsearch.facet_members IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE imgsearch.facet_counts IN ACCESS EXCLUSIVE MODE;
"""

SCOPE = """
ALTER TABLE imgsearch.facet_counts ADD COLUMN category text;
DROP INDEX imgsearch.facet_counts_model_id_tenant_idx;
CREATE INDEX facet_counts_scope_idx ON imgsearch.facet_counts (model_id, tenant, category, facet);
CREATE INDEX facet_members_category_price_idx ON imgsearch.facet_members (model_id, tenant, category, price);
"""

COUNTS = r"""
CREATE OR REPLACE FUNCTION imgsearch._facet_counts_moved(tenants text[], models smallint[], categories text[], brands text[], prices numeric[], attributes jsonb[], ns integer[])
 RETURNS TABLE(tenant text, model_id smallint, category text, facet text, key text, value text, n bigint)
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- the counts that products' values move by: each row (tenants[i], models[i], ...) counts a
    -- product's values on (ns[i] 1) or off (-1) under a model, in its shop (category NULL) and in
    -- its category's own counts. What a product counts under is imgsearch._facet_values; the rows
    -- are grouped first by what each part of it reads, within their category, so that rows alike
    -- are expanded once: the total, category and brand by those two, the attributes by the
    -- document, the price's buckets by its whole units (a bucket, div(price, 10^j), truncates
    -- toward zero as trunc(price) does: each is the same for both)
    WITH moved AS (
        SELECT * FROM unnest(tenants, models, categories, brands, prices, attributes, ns)
            AS m(tenant, model_id, category, brand, price, attributes, n)
        WHERE m.tenant IS NOT NULL
    ), parts AS (
        SELECT 'labels' AS part, m.tenant, m.model_id, m.category, m.brand, NULL::numeric AS price,
               NULL::jsonb AS attributes, sum(m.n) AS n
        FROM moved m GROUP BY m.tenant, m.model_id, m.category, m.brand HAVING sum(m.n) <> 0
        UNION ALL
        SELECT 'attributes', m.tenant, m.model_id, m.category, NULL, NULL, m.attributes, sum(m.n)
        FROM moved m WHERE m.attributes IS NOT NULL
        GROUP BY m.tenant, m.model_id, m.category, m.attributes HAVING sum(m.n) <> 0
        UNION ALL
        SELECT 'price', m.tenant, m.model_id, m.category, NULL, trunc(m.price), NULL, sum(m.n)
        FROM moved m WHERE m.price IS NOT NULL
        GROUP BY m.tenant, m.model_id, m.category, trunc(m.price) HAVING sum(m.n) <> 0
    )
    -- each count twice: the shop's (category NULL) and its category's (none for a product without one)
    SELECT e.tenant, e.model_id, CASE WHEN grouping(e.category) = 0 THEN e.category END, e.facet, e.key, e.value,
           sum(e.n)
    FROM (SELECT p.tenant, p.model_id, p.category, f.facet, f.key, f.value, p.n
          FROM parts p
          CROSS JOIN LATERAL imgsearch._facet_values(CASE WHEN p.part = 'labels' THEN p.category END, p.brand,
                                                     p.price, p.attributes) f
          WHERE f.facet <> 'total' OR p.part = 'labels'  -- each product once in the total
         ) AS e
    GROUP BY GROUPING SETS ((e.tenant, e.model_id, e.facet, e.key, e.value),
                            (e.tenant, e.model_id, e.category, e.facet, e.key, e.value))
    HAVING sum(e.n) <> 0 AND (grouping(e.category) = 1 OR e.category IS NOT NULL)
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
        INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n)
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
    INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n)
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
    INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n)
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

COMPACT = r"""
CREATE OR REPLACE FUNCTION imgsearch.compact_facet_counts(tenant text, model_id smallint)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- a shop's counts (its own and its categories') folded into one row per value: the rows it
    -- deletes are those it sums (a count a concurrent writer appends meanwhile stays beside them)
    WITH gone AS (
        DELETE FROM imgsearch.facet_counts c
        WHERE c.tenant = compact_facet_counts.tenant AND c.model_id = compact_facet_counts.model_id
        RETURNING c.category, c.facet, c.key, c.value, c.n
    ), folded AS (
        INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n)
        SELECT compact_facet_counts.tenant, compact_facet_counts.model_id, g.category, g.facet, g.key, g.value,
               sum(g.n)
        FROM gone g GROUP BY g.category, g.facet, g.key, g.value HAVING sum(g.n) <> 0
        RETURNING 1
    )
    SELECT count(*) FROM folded
$function$;
"""

# each category's counts of the products counted now (a key with rows, in a shop)
BACKFILL = """
INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n)
SELECT m.tenant, m.model_id, m.category, f.facet, f.key, f.value, count(*)
FROM imgsearch.facet_members m
CROSS JOIN LATERAL imgsearch._facet_values(m.category, m.brand, m.price, m.attributes) f
WHERE m.rows > 0 AND m.tenant IS NOT NULL AND m.category IS NOT NULL
GROUP BY 1, 2, 3, 4, 5, 6;
"""

PREVIOUS_COUNTS = r"""
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

PREVIOUS_COMPACT = r"""
CREATE OR REPLACE FUNCTION imgsearch.compact_facet_counts(tenant text, model_id smallint)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- a shop's counts folded into one row per value: the rows it deletes are those it sums (a
    -- count a concurrent writer appends meanwhile stays beside them)
    WITH gone AS (
        DELETE FROM imgsearch.facet_counts c
        WHERE c.tenant = compact_facet_counts.tenant AND c.model_id = compact_facet_counts.model_id
        RETURNING c.facet, c.key, c.value, c.n
    ), folded AS (
        INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
        SELECT compact_facet_counts.tenant, compact_facet_counts.model_id, g.facet, g.key, g.value, sum(g.n)
        FROM gone g GROUP BY g.facet, g.key, g.value HAVING sum(g.n) <> 0
        RETURNING 1
    )
    SELECT count(*) FROM folded
$function$;
"""

PREVIOUS_SCOPE = """
DELETE FROM imgsearch.facet_counts WHERE category IS NOT NULL;
DROP INDEX imgsearch.facet_counts_scope_idx;
ALTER TABLE imgsearch.facet_counts DROP COLUMN category;
DROP INDEX imgsearch.facet_members_category_price_idx;
CREATE INDEX facet_counts_model_id_tenant_idx ON imgsearch.facet_counts (model_id, tenant);
"""


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, LOCKS)
    definitions.run(conn, SCOPE)
    op.execute(f"DROP FUNCTION imgsearch._facet_counts_moved({MOVED_ARGS})")
    for statement in (COUNTS, FOLLOW, FOLLOW_PRODUCTS, COMPACT, BACKFILL):
        definitions.run(conn, statement)


def downgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, LOCKS)
    op.execute(f"DROP FUNCTION imgsearch._facet_counts_moved({MOVED_ARGS})")
    for statement in (
        PREVIOUS_SCOPE,
        PREVIOUS_COUNTS,
        PREVIOUS_FOLLOW,
        PREVIOUS_FOLLOW_PRODUCTS,
        PREVIOUS_COMPACT,
    ):
        definitions.run(conn, statement)
