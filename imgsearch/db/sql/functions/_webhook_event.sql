-- imgsearch._webhook_event: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._webhook_event(tenant text, type text, data jsonb, ordering_key text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    event bigint;
BEGIN
    -- a shop without a live endpoint keeps no events: a change pays one index probe
    IF NOT EXISTS (SELECT 1 FROM imgsearch.webhook_endpoints w
                   WHERE w.tenant = _webhook_event.tenant AND w.disabled_at IS NULL) THEN
        RETURN NULL;
    END IF;
    INSERT INTO imgsearch.webhook_events (tenant, type, data, ordering_key)
        VALUES (_webhook_event.tenant, _webhook_event.type, _webhook_event.data, _webhook_event.ordering_key)
        RETURNING id INTO event;
    INSERT INTO imgsearch.webhook_deliveries (tenant, endpoint_id, event_id, ordering_key)
        SELECT w.tenant, w.id, event, _webhook_event.ordering_key FROM imgsearch.webhook_endpoints w
        WHERE w.tenant = _webhook_event.tenant AND w.disabled_at IS NULL AND _webhook_event.type = ANY (w.events);
    -- the delivering workers wake at once (on a Citus cluster, a shard's NOTIFY can't join the
    -- two-phase commit: they look every second instead)
    IF NOT imgsearch._citus() THEN
        PERFORM pg_notify('imgsearch_webhook', '');
    END IF;
    RETURN event;
END
$function$;
