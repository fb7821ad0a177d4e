-- imgsearch.text_search_config: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.text_search_config()
 RETURNS regconfig
 LANGUAGE sql
 STABLE
AS $function$ SELECT config FROM imgsearch.text_search $function$;
