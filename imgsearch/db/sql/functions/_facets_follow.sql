-- imgsearch._facets_follow: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
