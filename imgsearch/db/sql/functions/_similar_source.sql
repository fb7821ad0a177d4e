-- imgsearch._similar_source: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._similar_source(p_image_id bigint, p_tenant text)
 RETURNS halfvec
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    source halfvec;
    model smallint := imgsearch._image_model_id();
BEGIN
    -- the model read first: a function called in a query Citus sends to the shards can't read the cluster
    SELECT e.embedding INTO source FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.image_id = p_image_id AND e.region = 0
          AND (p_tenant IS NULL OR e.tenant = p_tenant);
    IF source IS NULL THEN
        RAISE EXCEPTION 'no embedded image with id %', p_image_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN source;
END
$function$;
