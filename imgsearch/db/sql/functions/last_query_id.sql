-- imgsearch.last_query_id: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.last_query_id()
 RETURNS uuid
 LANGUAGE sql
 STABLE
RETURN (NULLIF(current_setting('imgsearch.last_query_id'::text, true), ''::text))::uuid;
