-- imgsearch._facet_counts_moved: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
