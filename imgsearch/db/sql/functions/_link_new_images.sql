-- imgsearch._link_new_images: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._link_new_images()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO imgsearch.image_products (image_id, product_pk, tenant)
    SELECT a.id, a.product_pk, a.tenant FROM added a
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$function$;
