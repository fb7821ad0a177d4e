-- imgsearch._binary_codes_on: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._binary_codes_on(model smallint)
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- imgsearch.db.binary_codes.MIN_RECALL; PL/pgSQL, as _regions_on (a Citus cluster shares the
    -- schema's functions with its workers)
    RETURN EXISTS (SELECT 1 FROM imgsearch.binary_code_checks c WHERE c.model_id = model AND c.recall >= 0.98);
END
$function$;
