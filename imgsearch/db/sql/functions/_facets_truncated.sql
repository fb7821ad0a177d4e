-- imgsearch._facets_truncated: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
