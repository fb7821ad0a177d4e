-- imgsearch._filters_recheck_products: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._filters_recheck_products()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the changed products' rows, after the facets' trigger waited at their member keys for any
    -- statement adding rows of them: a row committed meanwhile, which the row trigger's update
    -- could not see, takes the new values
    UPDATE imgsearch.embeddings e SET category = n.category, price = n.price
    FROM new_products n JOIN old_products o ON o.id = n.id
    WHERE e.product_pk = n.id
      AND (n.category, n.price) IS DISTINCT FROM (o.category, o.price)
      AND (e.category, e.price) IS DISTINCT FROM (n.category, n.price);
    RETURN NULL;
END
$function$;
