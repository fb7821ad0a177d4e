-- imgsearch.record_events: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.record_events(events jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
DECLARE
    checked imgsearch.checked_event[];
    problems jsonb;
    recorded bigint;
    n integer;
BEGIN
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of events' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n := jsonb_array_length(events);
    IF n = 0 OR n > 10000 THEN
        RAISE EXCEPTION 'a batch has 1 to 10000 events, got %', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    checked := ARRAY(SELECT c FROM imgsearch._checked_events(events) AS c);
    SELECT jsonb_agg(jsonb_build_object('index', c.index, 'error', c.problem) ORDER BY c.index)
      INTO problems FROM unnest(checked) AS c WHERE c.problem IS NOT NULL;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION '% of % events refused, nothing recorded: %', jsonb_array_length(problems), n,
            (SELECT string_agg(format('event %s: %s', p->>'index', p->>'error'), '; ')
             FROM (SELECT p FROM jsonb_array_elements(problems) AS p LIMIT 5) AS first)
            USING ERRCODE = 'invalid_parameter_value', DETAIL = problems::text;
    END IF;
    WITH firsts AS (  -- an event_id once per batch: its first event
        SELECT DISTINCT ON (coalesce(c.tenant, ''), c.event_id) c.* FROM unnest(checked) AS c
        WHERE c.event_id IS NOT NULL ORDER BY coalesce(c.tenant, ''), c.event_id, c.index
    ), fresh AS (
        INSERT INTO imgsearch.event_ids (tenant, event_id, occurred_at)
        SELECT coalesce(f.tenant, ''), f.event_id, f.occurred_at FROM firsts f
        ON CONFLICT DO NOTHING
        RETURNING tenant, event_id
    ), kept AS (
        SELECT c.* FROM unnest(checked) AS c WHERE c.event_id IS NULL
        UNION ALL
        SELECT f.* FROM firsts f JOIN fresh ON fresh.tenant = coalesce(f.tenant, '') AND fresh.event_id = f.event_id
    ), written AS (
        INSERT INTO imgsearch.search_events (query_id, occurred_at, tenant, action_name, object_id, object_id_field,
                                             position, product_pk, query_norm, event_id, client_id)
        SELECT k.query_id, k.occurred_at, k.tenant, k.action_name, k.object_id, k.object_id_field, k.position,
               k.product_pk, k.query_norm, k.event_id, k.client_id
        FROM kept k
        RETURNING 1
    )
    SELECT count(*) INTO recorded FROM written;
    RETURN jsonb_build_object('recorded', recorded, 'duplicates', n - recorded);
END
$function$;
