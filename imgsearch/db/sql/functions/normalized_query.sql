-- imgsearch.normalized_query: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.normalized_query(query text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
RETURN NULLIF("left"(btrim(regexp_replace(casefold((NORMALIZE(query, NFKC) COLLATE pg_unicode_fast)), '\s+'::text, ' '::text, 'g'::text), ' '::text), 500), ''::text);
