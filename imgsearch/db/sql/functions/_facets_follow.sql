-- imgsearch._facets_follow: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
