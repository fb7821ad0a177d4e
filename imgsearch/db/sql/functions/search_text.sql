-- imgsearch.search_text: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.search_text(query text, k integer DEFAULT 10, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision, probability double precision)
 LANGUAGE plpgsql
AS $function$
DECLARE
    q record;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce(search_text.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));
    RETURN QUERY
        SELECT s.image_id, s.product_id, s.distance,
            CASE WHEN q.logit_bias IS NULL THEN NULL
                 ELSE 1 / (1 + exp(-(q.logit_scale * (1 - s.distance) + q.logit_bias))) END
        FROM imgsearch._answered(l2_normalize(q.embedding)::halfvec, k, search_text.tenant, search_text.category,
                                 price_min, price_max, NULL, NULL, query,
                                 '{"kind": "text", "mode": "semantic"}') AS s;
END
$function$;
