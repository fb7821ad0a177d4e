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
    -- the price's bucket of each width 10^j: key j, value the price divided by 10^j, truncated
    UNION ALL SELECT 'price', w.j, div(price, w.width)::text
        FROM (VALUES ('0', 1::numeric), ('1', 10), ('2', 100), ('3', 1000), ('4', 10000), ('5', 100000),
                     ('6', 1000000), ('7', 10000000), ('8', 100000000), ('9', 1000000000)) AS w(j, width)
        WHERE price IS NOT NULL
$function$;
