-- imgsearch._product_source: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._product_source(p_tenant text, p_product_id text, OUT source halfvec, OUT pk bigint)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    model smallint := imgsearch._image_model_id();  -- read first: see _similar_source
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'search_similar_product needs a tenant: product ids name products within a tenant'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.id INTO pk FROM imgsearch.products p
        WHERE p.tenant = p_tenant AND p.product_id = p_product_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % has no product %', quote_literal(p_tenant), quote_literal(p_product_id)
            USING ERRCODE = 'no_data_found';
    END IF;
    -- the unit mean of the product's images (their whole rows), as the library computes it
    SELECT l2_normalize(avg(l2_normalize(e.embedding::vector)))::halfvec INTO source
        FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.tenant = p_tenant AND e.product_pk = pk AND e.region = 0;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$function$;
