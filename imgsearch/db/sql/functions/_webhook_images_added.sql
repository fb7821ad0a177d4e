-- imgsearch._webhook_images_added: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._webhook_images_added()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    r record;
BEGIN
    -- the images added ready, of shops with a live endpoint for image.ready (a shop without one
    -- pays this statement's probe, not a call per image), in the order they were made
    FOR r IN SELECT a.id, a.tenant,
                    (SELECT p.product_id FROM imgsearch.products p WHERE p.tenant = a.tenant AND p.id = a.product_pk) AS product_id
             FROM added a
             WHERE a.state = 'ready'
               AND EXISTS (SELECT FROM imgsearch.webhook_endpoints w WHERE w.tenant = a.tenant
                           AND w.disabled_at IS NULL AND 'image.ready' = ANY (w.events))
             ORDER BY a.id LOOP
        PERFORM imgsearch._webhook_event(r.tenant, 'image.ready',
            jsonb_build_object('image_id', r.id, 'tenant', r.tenant, 'product_id', r.product_id),
            'image:' || r.id);
    END LOOP;
    RETURN NULL;
END
$function$;
