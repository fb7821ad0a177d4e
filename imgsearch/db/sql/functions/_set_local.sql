-- imgsearch._set_local: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._set_local(name text, value text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF imgsearch._citus() THEN
        EXECUTE format('DO $set$ BEGIN SET LOCAL %s TO %L; END $set$', name, value);
    ELSE
        PERFORM set_config(name, value, true);
    END IF;
END
$function$;
