-- imgsearch.set_text_search_config: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.set_text_search_config(config regconfig)
 RETURNS regconfig
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    doc text := replace('
    setweight(to_tsvector({cfg}, coalesce(title, '''')), ''A'')
    || setweight(to_tsvector({cfg}, coalesce(brand, '''') || '' '' || coalesce(category, '''')), ''B'')
    || setweight(jsonb_to_tsvector({cfg}, attributes, ''["string", "numeric"]''), ''C'')
    || setweight(to_tsvector({cfg}, coalesce(description, '''')), ''D'')
', '{cfg}', format('%L::regconfig', config::text));
BEGIN
    -- a new expression rewrites the column (and its index) for every product, in this transaction
    EXECUTE format('ALTER TABLE imgsearch.products ALTER COLUMN search_doc SET EXPRESSION AS (%s)', doc);
    UPDATE imgsearch.text_search SET config = set_text_search_config.config;
    RETURN config;
END
$function$;
