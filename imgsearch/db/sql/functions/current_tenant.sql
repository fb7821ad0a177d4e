-- imgsearch.current_tenant: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.current_tenant()
 RETURNS text
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT NULLIF(current_setting('imgsearch.tenant'::text, true), ''::text) AS "nullif";
END;
