-- imgsearch.adapted: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.adapted(query vector, tenant text)
 RETURNS vector
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    mapped vector;
BEGIN
    SELECT l2_normalize(array_agg(-(r.weights <#> query) ORDER BY r."row")::vector) INTO mapped
    FROM imgsearch.query_adapter_rows r
    JOIN imgsearch.query_adapters a ON a.id = r.adapter_id AND a.tenant = r.tenant
    WHERE a.active AND a.tenant = adapted.tenant AND r.tenant = adapted.tenant
      AND a.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active);
    RETURN coalesce(mapped, query);
END
$function$;
