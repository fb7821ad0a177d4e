-- imgsearch._image_counts_truncated: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._image_counts_truncated()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    TRUNCATE imgsearch.image_counts;
    RETURN NULL;
END
$function$;
