-- imgsearch._text_answer: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._text_answer(model smallint, query text, OUT embedding text, OUT logit_scale double precision, OUT logit_bias double precision, OUT error text)
 RETURNS record
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    SELECT t.embedding::text, t.logit_scale, t.logit_bias INTO embedding, logit_scale, logit_bias
        FROM imgsearch.text_embeddings t WHERE t.model_id = model AND t.text_hash = imgsearch._text_hash(query);
    IF embedding IS NULL THEN
        SELECT r.error INTO error FROM imgsearch.text_requests r
            WHERE r.model_id = model AND r.text_hash = imgsearch._text_hash(query);
    END IF;
END
$function$;
