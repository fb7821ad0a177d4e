-- imgsearch._boost_lift: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._boost_lift(tenant text)
 RETURNS integer
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    enabled text := lower(btrim(coalesce(nullif(current_setting('imgsearch.boost', true), ''), 'on')));
    lift text := btrim(coalesce(nullif(current_setting('imgsearch.boost_max_lift', true), ''), '10'));
BEGIN
    IF enabled IN ('off', 'false', 'no', '0') THEN
        RETURN 0;
    ELSIF enabled NOT IN ('on', 'true', 'yes', '1') THEN
        RAISE EXCEPTION 'imgsearch.boost must be on or off, got %', quote_literal(enabled)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lift !~ '^[0-9]{1,3}$' OR lift::int > 100 THEN
        RAISE EXCEPTION 'imgsearch.boost_max_lift must be a whole number of places from 0 to 100, got %',
            quote_literal(lift) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lift::int > 0
       AND NOT EXISTS (SELECT 1 FROM imgsearch.boosts b WHERE _boost_lift.tenant IS NULL OR b.tenant = _boost_lift.tenant) THEN
        RETURN 0;
    END IF;
    RETURN lift::int;
END
$function$;
