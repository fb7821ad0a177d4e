"""Facet counts kept by triggers: a shop's facets read from a few hundred rows, not its products.

* ``facet_members``: one row per (product, model) that has search rows, with how many it has and
  the values it is counted under (tenant, category, brand, price, attributes). Its key is where
  concurrent changes of one product meet: a statement adding or removing a product's rows, or
  changing its values, upserts that key and holds it until commit, so the next one waits and then
  sees what the first did (READ COMMITTED: each statement of the functions reads anew).
* ``facet_counts``: an append-only log of signed counts per (tenant, model, facet, key, value):
  ``total``; ``category``; ``brand``; ``attribute`` (key, value as text, for string, number and
  boolean values); ``price`` (key: the level j from 0 to 9, value: ``div(price, 10^j)``, the cell
  a price bucket of width 1, 2, 5 or 10 times ``10^j`` is made of). Writers only append (no row
  is a hot spot for a shop's concurrent uploads); a read sums a shop's rows;
  ``imgsearch.compact_facet_counts`` folds them when they pile up.
* Triggers: statement-level with transition tables on ``embeddings`` (insert, update, delete),
  on ``products`` (update: a counted product's values move), and truncate. Deleting a product
  reaches its rows by cascade: they are counted off with the values kept in ``facet_members``.

Exact, as the one-pass statement (:mod:`imgsearch.search.facets`) that filtered facets still
use; Citus mode keeps that statement too (:func:`imgsearch.db.citus.distribute` drops these
triggers). Each definition is held whole (imgsearch/db/sql/).

Revision ID: 0039
Revises: 0038
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import citus, definitions

revision: str = "0039"
down_revision: str | None = "0038"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "imgsearch_app, imgsearch_console, imgsearch_worker, imgsearch_admin"
TABLES = ("facet_members", "facet_counts")

CREATE = """
CREATE TABLE imgsearch.facet_members (
    product_pk bigint NOT NULL,
    model_id smallint NOT NULL,
    rows integer NOT NULL,
    tenant text,
    category text,
    brand text,
    price numeric,
    attributes jsonb,
    CONSTRAINT facet_members_pkey PRIMARY KEY (product_pk, model_id)
);
CREATE INDEX facet_members_price_idx ON imgsearch.facet_members (model_id, tenant, price);

CREATE TABLE imgsearch.facet_counts (
    tenant text NOT NULL,
    model_id smallint NOT NULL,
    facet text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    n bigint NOT NULL
);
CREATE INDEX facet_counts_model_id_tenant_idx ON imgsearch.facet_counts (model_id, tenant);
"""

FUNCTIONS = r"""
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

CREATE OR REPLACE FUNCTION imgsearch._facets_follow_rows()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    products bigint[];
    models smallint[];
    deltas integer[];
BEGIN
    -- the rows a statement added and removed, per (product, model); an update that keeps the
    -- keys (the filter columns' copies) changes nothing
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(product_pk), array_agg(model_id), array_agg(n) INTO products, models, deltas
        FROM (SELECT product_pk, model_id, count(*)::integer AS n FROM added GROUP BY 1, 2) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(product_pk), array_agg(model_id), array_agg(n) INTO products, models, deltas
        FROM (SELECT product_pk, model_id, -count(*)::integer AS n FROM removed GROUP BY 1, 2) AS s;
    ELSE
        SELECT array_agg(product_pk), array_agg(model_id), array_agg(n) INTO products, models, deltas
        FROM (SELECT product_pk, model_id, sum(n)::integer AS n
              FROM (SELECT product_pk, model_id, 1 AS n FROM added
                    UNION ALL SELECT product_pk, model_id, -1 FROM removed) AS moved
              GROUP BY 1, 2 HAVING sum(n) <> 0) AS s;
    END IF;
    IF products IS NOT NULL THEN
        PERFORM imgsearch._facets_follow(products, models, deltas);
    END IF;
    RETURN NULL;
END
$function$;

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

CREATE OR REPLACE FUNCTION imgsearch._facets_truncated()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    TRUNCATE imgsearch.facet_members, imgsearch.facet_counts;
    RETURN NULL;
END
$function$;

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

TRIGGERS = r"""CREATE OR REPLACE TRIGGER embeddings_facets_added AFTER INSERT ON imgsearch.embeddings REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_rows();

CREATE OR REPLACE TRIGGER embeddings_facets_moved AFTER UPDATE ON imgsearch.embeddings REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_rows();

CREATE OR REPLACE TRIGGER embeddings_facets_removed AFTER DELETE ON imgsearch.embeddings REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_rows();

CREATE OR REPLACE TRIGGER embeddings_facets_truncated AFTER TRUNCATE ON imgsearch.embeddings FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_truncated();

CREATE OR REPLACE TRIGGER products_facets_moved AFTER UPDATE ON imgsearch.products REFERENCING OLD TABLE AS old_products NEW TABLE AS new_products FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_products();
"""

# what a catalog with search rows counts already
BACKFILL = """
INSERT INTO imgsearch.facet_members (product_pk, model_id, rows, tenant, category, brand, price, attributes)
SELECT e.product_pk, e.model_id, e.n, p.tenant, p.category, p.brand, p.price, p.attributes
FROM (SELECT product_pk, model_id, count(*)::integer AS n FROM imgsearch.embeddings GROUP BY 1, 2) AS e
JOIN imgsearch.products p ON p.id = e.product_pk;
INSERT INTO imgsearch.facet_counts (tenant, model_id, facet, key, value, n)
SELECT m.tenant, m.model_id, f.facet, f.key, f.value, count(*)
FROM imgsearch.facet_members m CROSS JOIN LATERAL imgsearch._facet_values(m.category, m.brand, m.price, m.attributes) f
GROUP BY 1, 2, 3, 4, 5;
"""

TRIGGER_NAMES = (
    ("embeddings_facets_added", "embeddings"),
    ("embeddings_facets_moved", "embeddings"),
    ("embeddings_facets_removed", "embeddings"),
    ("embeddings_facets_truncated", "embeddings"),
    ("products_facets_moved", "products"),
)


def upgrade() -> None:
    conn = op.get_bind()
    definitions.run(conn, CREATE)
    for table in TABLES:
        op.execute(f"GRANT SELECT ON imgsearch.{table} TO {ROLES}")
        op.execute(f"ALTER TABLE imgsearch.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_app ON imgsearch.{table} FOR SELECT TO imgsearch_app "
            "USING (tenant = imgsearch.current_tenant())"
        )
        op.execute(
            f"CREATE POLICY tenant_console ON imgsearch.{table} FOR SELECT TO imgsearch_console "
            "USING (tenant = imgsearch.login_tenant())"
        )
        op.execute(
            f"CREATE POLICY all_tenants ON imgsearch.{table} FOR SELECT TO imgsearch_admin, imgsearch_worker USING (true)"
        )
    definitions.run(conn, FUNCTIONS)
    op.execute("REVOKE EXECUTE ON FUNCTION imgsearch.compact_facet_counts(text, smallint) FROM PUBLIC")
    op.execute(
        "GRANT EXECUTE ON FUNCTION imgsearch.compact_facet_counts(text, smallint) "
        "TO imgsearch_app, imgsearch_worker, imgsearch_admin"
    )
    if citus.is_distributed(conn):  # a cluster counts with the one-pass statement: no triggers
        return
    definitions.run(conn, BACKFILL)
    definitions.run(conn, TRIGGERS)


def downgrade() -> None:
    if citus.is_distributed(op.get_bind()):  # none is there, but Citus refuses even to look
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    for trigger, table in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON imgsearch.{table}")
    op.execute("DROP FUNCTION imgsearch.compact_facet_counts(text, smallint)")
    op.execute("DROP FUNCTION imgsearch._facets_truncated()")
    op.execute("DROP FUNCTION imgsearch._facets_follow_products()")
    op.execute("DROP FUNCTION imgsearch._facets_follow_rows()")
    op.execute("DROP FUNCTION imgsearch._facets_follow(bigint[], smallint[], integer[])")
    op.execute("DROP FUNCTION imgsearch._facet_values(text, text, numeric, jsonb)")
    op.execute("DROP TABLE imgsearch.facet_counts, imgsearch.facet_members")
