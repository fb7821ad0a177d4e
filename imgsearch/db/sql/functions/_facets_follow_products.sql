-- imgsearch._facets_follow_products: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
