-- imgsearch._webhook_event: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._webhook_event(tenant text, type text, data jsonb, ordering_key text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    event bigint;
    endpoint bigint;
BEGIN
    -- an event no live endpoint takes is not kept: a shop without webhooks pays one index probe
    IF NOT EXISTS (SELECT 1 FROM imgsearch.webhook_endpoints w WHERE w.tenant = _webhook_event.tenant
                   AND w.disabled_at IS NULL AND _webhook_event.type = ANY (w.events)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO imgsearch.webhook_events (tenant, type, data, ordering_key)
        VALUES (_webhook_event.tenant, _webhook_event.type, _webhook_event.data, _webhook_event.ordering_key)
        RETURNING id INTO event;
    -- one statement per endpoint, each naming the tenant: on a Citus shard, each stays on the
    -- shop's node (an INSERT ... SELECT would be a query of the cluster)
    FOR endpoint IN SELECT w.id FROM imgsearch.webhook_endpoints w WHERE w.tenant = _webhook_event.tenant
                    AND w.disabled_at IS NULL AND _webhook_event.type = ANY (w.events) LOOP
        INSERT INTO imgsearch.webhook_deliveries (tenant, endpoint_id, event_id, ordering_key)
            VALUES (_webhook_event.tenant, endpoint, event, _webhook_event.ordering_key);
    END LOOP;
    -- the delivering workers wake at once (on a Citus cluster, a shard's NOTIFY can't join the
    -- two-phase commit: they look every second instead)
    IF NOT imgsearch._citus() THEN
        PERFORM pg_notify('imgsearch_webhook', '');
    END IF;
    RETURN event;
END
$function$;
