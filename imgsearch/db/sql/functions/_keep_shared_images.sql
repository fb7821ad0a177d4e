-- imgsearch._keep_shared_images: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._keep_shared_images()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- images of the product being deleted that another product shares change hands first, so
    -- the images' cascade deletes only the ones no other product has
    UPDATE imgsearch.images i SET product_pk = other.product_pk, updated_at = now()
    FROM (
        SELECT DISTINCT ON (l.image_id) l.image_id, l.product_pk
        FROM imgsearch.image_products l JOIN imgsearch.images s ON s.id = l.image_id
        WHERE s.product_pk = OLD.id AND l.product_pk <> OLD.id
        ORDER BY l.image_id, l.created_at, l.product_pk
    ) AS other
    WHERE i.id = other.image_id;
    RETURN OLD;
END
$function$;
