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
    FOR r IN SELECT a.id, a.tenant, a.product_pk
             FROM added a
             WHERE a.state = 'ready'
               AND EXISTS (SELECT FROM imgsearch.webhook_endpoints w WHERE w.tenant = a.tenant
                           AND w.disabled_at IS NULL AND 'image.ready' = ANY (w.events))
             ORDER BY a.id LOOP
        PERFORM imgsearch._webhook_event(r.tenant, 'image.ready',
            imgsearch._image_event_data(r.id, r.tenant, r.product_pk), 'image:' || r.id);
    END LOOP;
    RETURN NULL;
END
$function$;
