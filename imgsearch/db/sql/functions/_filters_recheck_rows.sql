-- imgsearch._filters_recheck_rows: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._filters_recheck_rows()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the rows just added, after the facets' trigger waited at their products' member keys for
    -- any change of them in flight: one whose product now has other values takes them (the
    -- check alone reads the rows added and their products; the update is the rare case)
    IF EXISTS (SELECT FROM added a JOIN imgsearch.products p ON p.id = a.product_pk
               WHERE (a.category, a.price) IS DISTINCT FROM (p.category, p.price)) THEN
        UPDATE imgsearch.embeddings e SET category = p.category, price = p.price
        FROM added a JOIN imgsearch.products p ON p.id = a.product_pk
        WHERE e.image_id = a.image_id AND e.product_pk = a.product_pk AND e.model_id = a.model_id
          AND e.region = a.region
          AND (a.category, a.price) IS DISTINCT FROM (p.category, p.price);
    END IF;
    RETURN NULL;
END
$function$;
