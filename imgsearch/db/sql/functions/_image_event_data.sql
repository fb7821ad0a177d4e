-- imgsearch._image_event_data: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._image_event_data(image_id bigint, tenant text, product_pk bigint)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- an image event's payload: the image, its shop, and its product's id
    SELECT jsonb_build_object('image_id', image_id, 'tenant', tenant, 'product_id',
        (SELECT p.product_id FROM imgsearch.products p
         WHERE p.tenant = _image_event_data.tenant AND p.id = _image_event_data.product_pk))
$function$;
