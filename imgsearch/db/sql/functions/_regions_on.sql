-- imgsearch._regions_on: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._regions_on()
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- PL/pgSQL, not BEGIN ATOMIC: a Citus cluster shares every function of the schema with its
    -- workers, and one that depended on the rules (a table of the coordinator's) couldn't be
    RETURN EXISTS (SELECT 1 FROM imgsearch.region_rules r WHERE r.source <> 'off');
END
$function$;
