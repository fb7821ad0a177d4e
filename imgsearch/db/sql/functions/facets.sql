-- imgsearch.facets: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.facets(query text DEFAULT NULL::text, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Written by imgsearch/search/console.py: the statements are the library's
-- (imgsearch.search.facets.statement). Edit it, then: python -m imgsearch.search.console --write
DECLARE
    shop text := imgsearch._shop(facets.tenant);
    -- a price bound in price_units: within the stored range, rounded inwards (search.filters;
    -- NULL: no bound, and greatest and least pass over a NULL)
    units_min bigint := CASE WHEN price_min IS NOT NULL
                             THEN ceil(least(greatest(price_min, -10000000000), 10000000000) * 10000)::bigint END;
    units_max bigint := CASE WHEN price_max IS NOT NULL
                             THEN floor(least(greatest(price_max, -10000000000), 10000000000) * 10000)::bigint END;
    exclude bigint;
    exclude_product bigint;
    model_id smallint := (SELECT m.id FROM imgsearch.models m WHERE m.active);
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
    counted record;
    -- the whole match set read once, counted per category, brand, attribute value and price
    every constant text := $sql$WITH matched AS
(SELECT imgsearch.products.id AS id, imgsearch.products.category AS category, imgsearch.products.brand AS brand, imgsearch.products.price AS price, imgsearch.products.attributes AS attributes
FROM imgsearch.products
WHERE ($1 IS NULL OR imgsearch.products.tenant = $1) AND ($2 IS NULL OR imgsearch.products.category = $2) AND ($3 IS NULL OR imgsearch.products.price_units >= $3) AND ($4 IS NULL OR imgsearch.products.price_units <= $4) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($1 IS NULL OR imgsearch.products.tenant = $1) AND imgsearch.embeddings.model_id = %1$s AND ($5 IS NULL OR imgsearch.embeddings.image_id != $5) AND ($6 IS NULL OR imgsearch.embeddings.product_pk != $6)))),
grouped AS MATERIALIZED
(
SELECT grouping(category, brand, price, attributes) AS g, category, brand, price, attributes,
       count(*) AS n
FROM matched
GROUP BY GROUPING SETS ((), (category), (brand), (price), (attributes))
),
bucket AS MATERIALIZED
(
SELECT CASE WHEN hi > lo THEN mag * CASE WHEN raw / mag <= 1 THEN 1 WHEN raw / mag <= 2 THEN 2
                                         WHEN raw / mag <= 5 THEN 5 ELSE 10 END
            ELSE greatest(hi, 1) END AS width
FROM (SELECT lo, hi, (hi - lo) / 5 AS raw,
             power(10::numeric, floor(log(greatest((hi - lo) / 5, 0.0001)))) AS mag
      FROM (SELECT min(price) AS lo, max(price) AS hi FROM grouped WHERE g = 13) AS r
      WHERE hi IS NOT NULL) AS sized
)
 SELECT counts.total, counts.category, counts.brand, counts.attributes, counts.price
FROM (
SELECT
  (SELECT n FROM grouped WHERE g = 15) AS total,
  (SELECT json_agg(json_build_array(category, n) ORDER BY n DESC, category) FROM (
     SELECT category, n FROM grouped WHERE g = 7 AND category IS NOT NULL
     ORDER BY n DESC, category LIMIT 20) AS c) AS category,
  (SELECT json_agg(json_build_array(brand, n) ORDER BY n DESC, brand) FROM (
     SELECT brand, n FROM grouped WHERE g = 11 AND brand IS NOT NULL
     ORDER BY n DESC, brand LIMIT 20) AS b) AS brand,
  (SELECT json_agg(json_build_array(key, key_n, top) ORDER BY key_n DESC, key) FROM (
     SELECT key, sum(n) AS key_n,
            json_agg(json_build_array(value, n) ORDER BY n DESC, value)
              FILTER (WHERE place <= 20) AS top
     FROM (
       SELECT key, value, n, row_number() OVER (PARTITION BY key ORDER BY n DESC, value) AS place
       FROM (
         SELECT a.key, a.value #>> '{}' AS value, sum(o.n) AS n
         FROM grouped o CROSS JOIN LATERAL jsonb_each(o.attributes) AS a
         WHERE o.g = 14 AND jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
         GROUP BY a.key, a.value #>> '{}'
       ) AS pairs
     ) AS placed
     GROUP BY key ORDER BY key_n DESC, key LIMIT 20) AS k) AS attributes,
  (SELECT json_agg(json_build_array(trim_scale(low)::text, trim_scale(low + width)::text, n) ORDER BY low) FROM (
     SELECT div(o.price, s.width) * s.width AS low, s.width, sum(o.n) AS n
     FROM grouped o CROSS JOIN bucket AS s
     WHERE o.g = 13 AND o.price IS NOT NULL
     GROUP BY 1, 2) AS p) AS price
FROM (SELECT 1) AS one
) AS counts$sql$;
    -- the same for the products matching the text
    matching constant text := $sql$WITH matched AS
(SELECT imgsearch.products.id AS id, imgsearch.products.category AS category, imgsearch.products.brand AS brand, imgsearch.products.price AS price, imgsearch.products.attributes AS attributes
FROM imgsearch.products
WHERE ($1 IS NULL OR imgsearch.products.tenant = $1) AND ($2 IS NULL OR imgsearch.products.category = $2) AND ($3 IS NULL OR imgsearch.products.price_units >= $3) AND ($4 IS NULL OR imgsearch.products.price_units <= $4) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($1 IS NULL OR imgsearch.products.tenant = $1) AND imgsearch.embeddings.model_id = %1$s AND ($5 IS NULL OR imgsearch.embeddings.image_id != $5) AND ($6 IS NULL OR imgsearch.embeddings.product_pk != $6))) AND imgsearch.products.id IN (SELECT lexical_match.product_pk
FROM unnest($7, $8, $9, $10) AS lexical_match(product_pk, exact_match, doc_rank, similarity))),
grouped AS MATERIALIZED
(
SELECT grouping(category, brand, price, attributes) AS g, category, brand, price, attributes,
       count(*) AS n
FROM matched
GROUP BY GROUPING SETS ((), (category), (brand), (price), (attributes))
),
bucket AS MATERIALIZED
(
SELECT CASE WHEN hi > lo THEN mag * CASE WHEN raw / mag <= 1 THEN 1 WHEN raw / mag <= 2 THEN 2
                                         WHEN raw / mag <= 5 THEN 5 ELSE 10 END
            ELSE greatest(hi, 1) END AS width
FROM (SELECT lo, hi, (hi - lo) / 5 AS raw,
             power(10::numeric, floor(log(greatest((hi - lo) / 5, 0.0001)))) AS mag
      FROM (SELECT min(price) AS lo, max(price) AS hi FROM grouped WHERE g = 13) AS r
      WHERE hi IS NOT NULL) AS sized
)
 SELECT counts.total, counts.category, counts.brand, counts.attributes, counts.price
FROM (
SELECT
  (SELECT n FROM grouped WHERE g = 15) AS total,
  (SELECT json_agg(json_build_array(category, n) ORDER BY n DESC, category) FROM (
     SELECT category, n FROM grouped WHERE g = 7 AND category IS NOT NULL
     ORDER BY n DESC, category LIMIT 20) AS c) AS category,
  (SELECT json_agg(json_build_array(brand, n) ORDER BY n DESC, brand) FROM (
     SELECT brand, n FROM grouped WHERE g = 11 AND brand IS NOT NULL
     ORDER BY n DESC, brand LIMIT 20) AS b) AS brand,
  (SELECT json_agg(json_build_array(key, key_n, top) ORDER BY key_n DESC, key) FROM (
     SELECT key, sum(n) AS key_n,
            json_agg(json_build_array(value, n) ORDER BY n DESC, value)
              FILTER (WHERE place <= 20) AS top
     FROM (
       SELECT key, value, n, row_number() OVER (PARTITION BY key ORDER BY n DESC, value) AS place
       FROM (
         SELECT a.key, a.value #>> '{}' AS value, sum(o.n) AS n
         FROM grouped o CROSS JOIN LATERAL jsonb_each(o.attributes) AS a
         WHERE o.g = 14 AND jsonb_typeof(a.value) IN ('string', 'number', 'boolean')
         GROUP BY a.key, a.value #>> '{}'
       ) AS pairs
     ) AS placed
     GROUP BY key ORDER BY key_n DESC, key LIMIT 20) AS k) AS attributes,
  (SELECT json_agg(json_build_array(trim_scale(low)::text, trim_scale(low + width)::text, n) ORDER BY low) FROM (
     SELECT div(o.price, s.width) * s.width AS low, s.width, sum(o.n) AS n
     FROM grouped o CROSS JOIN bucket AS s
     WHERE o.g = 13 AND o.price IS NOT NULL
     GROUP BY 1, 2) AS p) AS price
FROM (SELECT 1) AS one
) AS counts$sql$;
BEGIN
    IF query IS NOT NULL THEN  -- first: lexical_match reads the products itself
    SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
        INTO m_pks, m_exact, m_ranks, m_similarities
        FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;
    END IF;
    EXECUTE format(CASE WHEN query IS NULL THEN every ELSE matching END, coalesce(model_id, 0))
        INTO counted USING shop, category, units_min, units_max, exclude, exclude_product, m_pks, m_exact, m_ranks, m_similarities;
    RETURN jsonb_build_object(
        'total', counted.total,
        'total_relation', 'eq',  -- facets read the whole match set: their total is exact
        'category', coalesce((SELECT jsonb_object_agg(c ->> 0, (c ->> 1)::bigint)
                              FROM json_array_elements(counted.category) AS c), '{}'),
        'brand', coalesce((SELECT jsonb_object_agg(b ->> 0, (b ->> 1)::bigint)
                           FROM json_array_elements(counted.brand) AS b), '{}'),
        'attributes', coalesce((SELECT jsonb_object_agg(a ->> 0, (SELECT jsonb_object_agg(v ->> 0, (v ->> 1)::bigint)
                                                                  FROM json_array_elements(a -> 2) AS v))
                                FROM json_array_elements(counted.attributes) AS a), '{}'),
        'price', coalesce((SELECT jsonb_agg(jsonb_build_object('from', (p ->> 0)::numeric, 'to', (p ->> 1)::numeric,
                                                               'count', (p ->> 2)::bigint) ORDER BY (p ->> 0)::numeric)
                           FROM json_array_elements(counted.price) AS p), '[]'));
END
$function$;
