-- imgsearch._facets_follow_rows: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
