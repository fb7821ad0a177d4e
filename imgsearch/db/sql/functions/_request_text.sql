-- imgsearch._request_text: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._request_text(model smallint, query text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the worker answering this text deletes its request with the answer it stores, in one
    -- transaction: wait for it (the lock), then look for the answer (a new snapshot)
    PERFORM 1 FROM imgsearch.text_requests r
        WHERE r.model_id = model AND r.text_hash = imgsearch._text_hash(query) FOR UPDATE;
    IF EXISTS (SELECT 1 FROM imgsearch.text_embeddings t
               WHERE t.model_id = model AND t.text_hash = imgsearch._text_hash(query)) THEN
        RETURN;  -- answered: nothing to ask, no one to wake
    END IF;
    INSERT INTO imgsearch.text_requests (model_id, text_hash, text)
        VALUES (model, imgsearch._text_hash(query), query)
        ON CONFLICT (model_id, text_hash) DO UPDATE SET claimed_at = NULL, error = NULL,
            requested_at = excluded.requested_at;
    PERFORM pg_notify('imgsearch_text_requests', '');
END
$function$;
