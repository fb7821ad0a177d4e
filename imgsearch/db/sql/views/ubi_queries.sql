-- imgsearch.ubi_queries: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE VIEW imgsearch.ubi_queries AS
 SELECT query_id::text AS query_id,
    NULLIF(tenant, ''::text) AS tenant,
    jsonb_strip_nulls(jsonb_build_object('application', application, 'query_id', query_id::text, 'client_id', client_id, 'user_query', user_query, 'query_attributes', query_attributes || jsonb_build_object('tenant', NULLIF(tenant, ''::text), 'offset', result_offset), 'object_id_field', 'product_id', 'query_response_id', query_id::text, 'query_response_hit_ids', to_jsonb(product_ids), 'timestamp', to_char((searched_at AT TIME ZONE 'UTC'::text), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'::text))) AS document
   FROM imgsearch.search_queries q;
