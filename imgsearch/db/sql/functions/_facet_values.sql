-- imgsearch._facet_values: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._facet_values(category text, brand text, price numeric, attributes jsonb)
 RETURNS TABLE(facet text, key text, value text)
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT 'total', '', ''
    UNION ALL SELECT 'category', '', category WHERE category IS NOT NULL
    UNION ALL SELECT 'brand', '', brand WHERE brand IS NOT NULL
    UNION ALL SELECT 'attribute', a.key, a.value #>> '{}'
        FROM jsonb_each(CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes END) AS a
        WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
    UNION ALL SELECT 'price', j::text, div(price, power(10::numeric, j))::text
        FROM generate_series(0, 9) AS j WHERE price IS NOT NULL
$function$;
