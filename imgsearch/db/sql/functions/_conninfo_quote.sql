-- imgsearch._conninfo_quote: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._conninfo_quote(value text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
RETURN ((''''::text || replace(replace(value, '\'::text, '\\'::text), ''''::text, '\'''::text)) || ''''::text);
