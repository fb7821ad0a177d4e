-- imgsearch._webhook_row_event: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._webhook_row_event()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the row's tenant is the one its own statement was allowed to change; the table is the
    -- trigger's argument (on a Citus shard, TG_TABLE_NAME is the shard's name)
    IF TG_ARGV[0] = 'products' THEN
        PERFORM imgsearch._webhook_event(NEW.tenant, 'product.updated',
            jsonb_build_object('product_id', NEW.product_id, 'tenant', NEW.tenant, 'changed',
                (SELECT jsonb_agg(n.key ORDER BY n.key) FROM jsonb_each(to_jsonb(NEW)) n
                 WHERE n.key IN ('category', 'price', 'currency', 'attributes', 'title', 'description', 'brand')
                   AND n.value IS DISTINCT FROM to_jsonb(OLD) -> n.key)),
            'product:' || NEW.id);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM imgsearch._webhook_event(OLD.tenant, 'image.deleted',
            imgsearch._image_event_data(OLD.id, OLD.tenant, OLD.product_pk), 'image:' || OLD.id);
    ELSE
        PERFORM imgsearch._webhook_event(NEW.tenant, 'image.' || NEW.state,
            imgsearch._image_event_data(NEW.id, NEW.tenant, NEW.product_pk)
            || CASE WHEN NEW.state = 'failed' THEN jsonb_build_object('reason', NEW.error) ELSE '{}'::jsonb END,
            'image:' || NEW.id);
    END IF;
    RETURN NULL;
END
$function$;
