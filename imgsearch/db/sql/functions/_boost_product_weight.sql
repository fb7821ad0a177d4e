-- imgsearch._boost_product_weight: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._boost_product_weight()
 RETURNS double precision
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    weight text := btrim(coalesce(nullif(current_setting('imgsearch.boost_product_weight', true), ''), '0.5'));
BEGIN
    IF weight !~ '^([0-9]+(\.[0-9]*)?|\.[0-9]+)$' OR weight::numeric > 1 THEN
        RAISE EXCEPTION 'imgsearch.boost_product_weight must be from 0 to 1, got %', quote_literal(weight)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN weight::double precision;
END
$function$;
