-- imgsearch.ubi_events: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE VIEW imgsearch.ubi_events AS
 SELECT query_id::text AS query_id,
    NULLIF(tenant, ''::text) AS tenant,
    jsonb_strip_nulls(jsonb_build_object('application', 'imgsearch', 'action_name', action_name, 'query_id', query_id::text, 'client_id', client_id, 'timestamp', to_char((occurred_at AT TIME ZONE 'UTC'::text), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'::text), 'message_type', 'INFO', 'event_attributes', jsonb_build_object('object', jsonb_build_object('object_id', object_id, 'object_id_field', object_id_field), 'position', jsonb_build_object('ordinal', "position"), 'event_id', event_id, 'tenant', NULLIF(tenant, ''::text)))) AS document
   FROM imgsearch.search_events e;
