-- imgsearch._search: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._search(query halfvec, k integer, tenant text, category text, price_min numeric, price_max numeric, exclude bigint)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT _search.image_id,
     _search.product_id,
     _search.distance
    FROM imgsearch._search(_search.query, _search.k, _search.tenant, _search.category, _search.price_min, _search.price_max, _search.exclude, NULL::bigint) _search(image_id, product_id, distance);
END;

CREATE OR REPLACE FUNCTION imgsearch._search(query halfvec, k integer, tenant text, category text, price_min numeric, price_max numeric, exclude bigint, exclude_product bigint)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT _search.image_id,
     _search.product_id,
     _search.distance
    FROM imgsearch._search(_search.query, _search.k, _search.tenant, _search.category, _search.price_min, _search.price_max, _search.exclude, _search.exclude_product, false) _search(image_id, product_id, distance);
END;

CREATE OR REPLACE FUNCTION imgsearch._search(query halfvec, k integer, tenant text, category text, price_min numeric, price_max numeric, exclude bigint, exclude_product bigint, for_images boolean)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE plpgsql
 STABLE
 SET "hnsw.ef_search" TO '200'
 SET "hnsw.iterative_scan" TO 'off'
 SET "hnsw.max_scan_tuples" TO '20000'
 SET "hnsw.scan_mem_multiplier" TO '4'
 SET jit TO 'off'
 SET random_page_cost TO '1.1'
 SET plan_cache_mode TO 'force_custom_plan'
 SET max_parallel_workers_per_gather TO '0'
AS $function$
-- Written by imgsearch/search/console.py: the statements are the library's
-- (imgsearch/search/statements.py), the numbers its plans' (imgsearch/search/plans.py), the order
-- imgsearch.search.strategy.search_vector's. Edit those, then: python -m imgsearch.search.console --write
DECLARE
    active record;
    images smallint := CASE WHEN for_images THEN imgsearch._image_model_id() END;  -- read first (Citus)
    has_filters boolean := num_nulls(tenant, category, price_min, price_max, exclude, exclude_product) < 6;
    -- a price bound in price_units: within the stored range, rounded inwards (search.filters;
    -- NULL: no bound, and greatest and least pass over a NULL)
    units_min bigint := CASE WHEN price_min IS NOT NULL
                             THEN ceil(least(greatest(price_min, -10000000000), 10000000000) * 10000)::bigint END;
    units_max bigint := CASE WHEN price_max IS NOT NULL
                             THEN floor(least(greatest(price_max, -10000000000), 10000000000) * 10000)::bigint END;
    total bigint;
    min_ef int;  -- plans.min_ef_search of the rows
    ef_search int;
    pool int;
    max_scan_tuples bigint;
    matching bigint := -1;
    bound bigint;
    source text;
    strategy text;
    ids bigint[];
    products text[];
    distances double precision[];
    boxed boolean[];  -- each row: a region's (true) or the whole image's
    -- images with region rows (a region rule is on, imgsearch.work.region_rules): each image
    -- once, by the closer of its whole row and its best region plus the margin, from a pool of
    -- rows (imgsearch.search.request, rerank.best_per_image)
    regioned boolean := imgsearch._regions_on();  -- any role may ask, none reads the rules
    codes boolean := false;  -- the model's binary codes passed their check (imgsearch.db.binary_codes)
    margin text := btrim(coalesce(nullif(current_setting('imgsearch.region_margin', true), ''), '0.16'));
    rows_k int := k;  -- the rows each statement fetches: k, or the pool
    last double precision;
    hits constant text := 'SELECT array_agg(s.image_id ORDER BY s.distance), array_agg(s.product_id ORDER BY s.distance),'
        ' array_agg(s.distance ORDER BY s.distance), array_agg(s.box IS NOT NULL ORDER BY s.distance) FROM (%s) s';
    counted_hits constant text := 'SELECT array_agg(s.image_id ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' array_agg(s.product_id ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' array_agg(s.distance ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' array_agg(s.box IS NOT NULL ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' max(s.matching), max(s.bound), max(s.total), max(s.source) FROM (%s) s';
    -- plans.reltuples: the catalog's row estimate
    total_rows constant text := $sql$SELECT coalesce((SELECT CAST(greatest(pg_catalog.pg_class.reltuples, 1) AS BIGINT) AS greatest_1
FROM pg_catalog.pg_class
WHERE pg_catalog.pg_class.oid = 'imgsearch.embeddings'::regclass), 1) AS coalesce_1$sql$;
    -- statements.exact_bound: the most rows an exact scan may take
    exact_rows constant text := $sql$SELECT CAST(greatest(1500, ceil(0.15 * $10), $2) AS BIGINT) AS greatest_1$sql$;
    -- statements.hnsw_statement: the matching rows among the ef_search nearest
    one_pass constant text := $sql$SELECT imgsearch.embeddings.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, imgsearch.embeddings.tenant, imgsearch.embeddings.category, imgsearch.embeddings.price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance, imgsearch.embeddings.box
FROM imgsearch.embeddings JOIN imgsearch.products ON imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1
 LIMIT $2$sql$;
    -- statements.filtered_statement: the count, the one pass and the exact scan, each run when
    -- the counts before it call for it
    filtered constant text := $sql$WITH few AS
(SELECT count(*) AS matching
FROM (SELECT imgsearch.embeddings.image_id AS image_id
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9)
 LIMIT 1500 + 1) AS few_rows),
one_pass AS MATERIALIZED
(SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND (SELECT few.matching
FROM few) > 1500 ORDER BY CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1
 LIMIT $2),
many AS
(SELECT count(*) AS matching
FROM (SELECT imgsearch.embeddings.image_id AS image_id
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND (SELECT few.matching
FROM few) > 1500 AND (SELECT count(*) AS count_1
FROM one_pass) < $2
 LIMIT $11 + 1) AS many_rows),
limits AS
(SELECT $11 AS bound, $10 AS total)
 SELECT CASE WHEN (few.matching <= 1500) THEN few.matching WHEN (many.matching > 0) THEN many.matching ELSE -1 END AS matching, limits.bound, limits.total, hits.source, hits.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, hits.tenant, hits.category, hits.price, hits.distance, hits.box
FROM few JOIN many ON true JOIN limits ON true LEFT OUTER JOIN (SELECT 'hnsw' AS source, one_pass.image_id AS image_id, one_pass.product_pk AS product_pk, one_pass.tenant AS tenant, one_pass.category AS category, one_pass.price AS price, one_pass.distance AS distance, one_pass.box AS box
FROM one_pass
WHERE (SELECT count(*) AS count_1
FROM one_pass) >= $2 UNION ALL SELECT 'exact' AS source, exact.image_id AS image_id, exact.product_pk AS product_pk, exact.tenant AS tenant, exact.category AS category, exact.price AS price, exact.distance AS distance, exact.box AS box
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND ((SELECT few.matching
FROM few) <= 1500 OR (SELECT few.matching
FROM few) > 1500 AND (SELECT count(*) AS count_1
FROM one_pass) < $2 AND (SELECT many.matching
FROM many) <= $11) ORDER BY imgsearch.embeddings.embedding <=> $1
 LIMIT $2) AS exact) AS hits ON true LEFT OUTER JOIN imgsearch.products ON imgsearch.products.id = hits.product_pk AND imgsearch.products.tenant = hits.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)$sql$;
    -- the same without the one pass (2 k above plans.MAX_EF_SEARCH)
    filtered_exact constant text := $sql$WITH few AS
(SELECT count(*) AS matching
FROM (SELECT imgsearch.embeddings.image_id AS image_id
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9)
 LIMIT 1500 + 1) AS few_rows),
many AS
(SELECT count(*) AS matching
FROM (SELECT imgsearch.embeddings.image_id AS image_id
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND (SELECT few.matching
FROM few) > 1500
 LIMIT $11 + 1) AS many_rows),
limits AS
(SELECT $11 AS bound, $10 AS total)
 SELECT CASE WHEN (few.matching <= 1500) THEN few.matching WHEN (many.matching > 0) THEN many.matching ELSE -1 END AS matching, limits.bound, limits.total, hits.source, hits.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, hits.tenant, hits.category, hits.price, hits.distance, hits.box
FROM few JOIN many ON true JOIN limits ON true LEFT OUTER JOIN (SELECT 'exact' AS source, exact.image_id AS image_id, exact.product_pk AS product_pk, exact.tenant AS tenant, exact.category AS category, exact.price AS price, exact.distance AS distance, exact.box AS box
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND ((SELECT few.matching
FROM few) <= 1500 OR (SELECT few.matching
FROM few) > 1500 AND (SELECT many.matching
FROM many) <= $11) ORDER BY imgsearch.embeddings.embedding <=> $1
 LIMIT $2) AS exact) AS hits ON true LEFT OUTER JOIN imgsearch.products ON imgsearch.products.id = hits.product_pk AND imgsearch.products.tenant = hits.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)$sql$;
    -- the same with the binary codes' part: a far filter's rows nearest by their codes, re-ranked
    filtered_codes constant text := $sql$WITH few AS
(SELECT count(*) AS matching
FROM (SELECT imgsearch.embeddings.image_id AS image_id
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9)
 LIMIT 1500 + 1) AS few_rows),
one_pass AS MATERIALIZED
(SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND (SELECT few.matching
FROM few) > 1500 ORDER BY CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1
 LIMIT $2),
many AS
(SELECT count(*) AS matching
FROM (SELECT imgsearch.embeddings.image_id AS image_id
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND (SELECT few.matching
FROM few) > 1500 AND (SELECT count(*) AS count_1
FROM one_pass) < $2
 LIMIT $11 + 1) AS many_rows),
limits AS
(SELECT $11 AS bound, $10 AS total),
code_pool AS MATERIALIZED
(SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.region AS region
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND (SELECT few.matching
FROM few) > 1500 AND (SELECT count(*) AS count_1
FROM one_pass) < $2 AND (SELECT many.matching
FROM many) <= $11 AND 1500 < (SELECT many.matching
FROM many) ORDER BY imgsearch.embeddings.code <~> (SELECT binary_quantize($1) AS binary_quantize_1)
 LIMIT greatest(400, $2))
 SELECT CASE WHEN (few.matching <= 1500) THEN few.matching WHEN (many.matching > 0) THEN many.matching ELSE -1 END AS matching, limits.bound, limits.total, hits.source, hits.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, hits.tenant, hits.category, hits.price, hits.distance, hits.box
FROM few JOIN many ON true JOIN limits ON true LEFT OUTER JOIN (SELECT 'hnsw' AS source, one_pass.image_id AS image_id, one_pass.product_pk AS product_pk, one_pass.tenant AS tenant, one_pass.category AS category, one_pass.price AS price, one_pass.distance AS distance, one_pass.box AS box
FROM one_pass
WHERE (SELECT count(*) AS count_1
FROM one_pass) >= $2 UNION ALL SELECT 'codes' AS source, codes.image_id AS image_id, codes.product_pk AS product_pk, codes.tenant AS tenant, codes.category AS category, codes.price AS price, codes.distance AS distance, codes.box AS box
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM code_pool JOIN imgsearch.embeddings ON imgsearch.embeddings.image_id = code_pool.image_id AND imgsearch.embeddings.product_pk = code_pool.product_pk AND imgsearch.embeddings.region = code_pool.region
WHERE imgsearch.embeddings.model_id = %1$s ORDER BY imgsearch.embeddings.embedding <=> $1
 LIMIT $2) AS codes UNION ALL SELECT 'exact' AS source, exact.image_id AS image_id, exact.product_pk AS product_pk, exact.tenant AS tenant, exact.category AS category, exact.price AS price, exact.distance AS distance, exact.box AS box
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND ((SELECT few.matching
FROM few) <= 1500 OR (SELECT few.matching
FROM few) > 1500 AND (SELECT count(*) AS count_1
FROM one_pass) < $2 AND (SELECT many.matching
FROM many) <= $11 AND 1500 >= (SELECT many.matching
FROM many)) ORDER BY imgsearch.embeddings.embedding <=> $1
 LIMIT $2) AS exact) AS hits ON true LEFT OUTER JOIN imgsearch.products ON imgsearch.products.id = hits.product_pk AND imgsearch.products.tenant = hits.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)$sql$;
    -- statements.pooled_statement: a relaxed iterative scan's pool, re-sorted exactly
    pooled constant text := $sql$WITH pool AS MATERIALIZED
(SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.products.product_id AS product_id, imgsearch.products.title AS title, imgsearch.products.brand AS brand, imgsearch.products.currency AS currency, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings JOIN imgsearch.products ON imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1
 LIMIT $3)
 SELECT pool.image_id, pool.product_id, pool.title, pool.brand, pool.currency, pool.tenant, pool.category, pool.price, pool.distance, pool.box
FROM pool ORDER BY pool.distance + 0
 LIMIT $2$sql$;
    -- statements.exact_statement: every matching row's distance
    exact constant text := $sql$SELECT top.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, top.tenant, top.category, top.price, top.distance, top.box
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.box AS box
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY imgsearch.embeddings.embedding <=> $1
 LIMIT $2) AS top JOIN imgsearch.products ON imgsearch.products.id = top.product_pk AND imgsearch.products.tenant = top.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4) ORDER BY top.distance$sql$;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION 'query vector must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- an image query's model: the one serving images beside the active one, if any (migration 0034)
    SELECT m.id, m.dim INTO active FROM imgsearch.models m
        WHERE CASE WHEN for_images THEN m.id = images ELSE m.active END;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active model: open the catalog once (imgsearch migrate)' USING ERRCODE = 'no_data_found';
    END IF;
    IF vector_dims(query) <> active.dim THEN
        RAISE EXCEPTION 'query vector has % dimensions, expected %', vector_dims(query), active.dim
            USING ERRCODE = 'data_exception';
    END IF;
    IF l2_norm(query) = 0 THEN
        RAISE EXCEPTION 'query vector is all zeros; cosine distance is undefined for a zero vector'
            USING ERRCODE = 'data_exception';
    END IF;
    IF price_min IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'price_min must be finite, got %', price_min USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF price_max IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'price_max must be finite, got %', price_max USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF price_min > price_max THEN
        RAISE EXCEPTION 'price_min % is above price_max %', price_min, price_max
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF regioned THEN
        IF margin !~ '^([0-9]+(\.[0-9]*)?|\.[0-9]+)$' OR margin::numeric > 2 THEN
            RAISE EXCEPTION 'imgsearch.region_margin must be from 0 to 2, got %', quote_literal(margin)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        rows_k := least(4000, greatest(50, 4 * k));
    END IF;
    IF imgsearch._citus() THEN
        PERFORM imgsearch._begin_distributed();
    ELSE  -- (a coordinator plans each shop's statement on its shard: no codes there, as in the library)
        codes := imgsearch._binary_codes_on(active.id);
    END IF;
    EXECUTE total_rows INTO total;
    min_ef := CASE WHEN total <= 100000 THEN 200
                   ELSE least(1000, ceil(200 * (total / 100000.0) ^ 0.3))::int END;
    LOOP
        strategy := NULL;
        EXECUTE exact_rows INTO bound USING query, rows_k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
        -- plans.one_pass_plan (none past 1000)
        ef_search := greatest(min_ef, 2 * rows_k);
        PERFORM imgsearch._set_local('hnsw.ef_search', CASE WHEN ef_search <= 1000 THEN ef_search ELSE min_ef END::text);
        PERFORM imgsearch._set_local('hnsw.iterative_scan', 'off');

        IF NOT has_filters AND ef_search <= 1000 THEN
            EXECUTE format(hits, format(one_pass, active.id, active.dim)) INTO ids, products, distances, boxed
                USING query, rows_k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
            IF coalesce(cardinality(ids), 0) >= rows_k THEN
                strategy := 'hnsw';
            END IF;
        ELSIF has_filters THEN
            -- the codes' part where a tenant or a category leads their index (statements.codes_cover)
            EXECUTE format(counted_hits, format(CASE WHEN ef_search > 1000 THEN filtered_exact
                                                     WHEN codes AND num_nulls(tenant, category) < 2 THEN filtered_codes
                                                     ELSE filtered END,
                                                active.id, active.dim))
                INTO ids, products, distances, boxed, matching, bound, total, source
                USING query, rows_k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
            IF source = 'hnsw' THEN
                strategy := 'hnsw';
            ELSIF source = 'codes' THEN
                strategy := format('codes (%s rows match)', matching);
            ELSIF 0 <= matching AND matching <= bound THEN
                strategy := format('exact (%s rows match)', matching);
            END IF;
        END IF;

        -- plans.iterative_plan: a relaxed scan collects a pool; an exact scan if even it comes short
        IF strategy IS NULL THEN
            ef_search := least(1000, greatest(min_ef, 2 * rows_k));
            max_scan_tuples := least(greatest(20000, total), 10000000);
            pool := least(4000, greatest(200, 4 * rows_k));
            PERFORM imgsearch._set_local('hnsw.ef_search', ef_search::text);
            PERFORM imgsearch._set_local('hnsw.iterative_scan', 'relaxed_order');
            PERFORM imgsearch._set_local('hnsw.max_scan_tuples', max_scan_tuples::text);
            PERFORM imgsearch._set_local('hnsw.scan_mem_multiplier', '4');
            EXECUTE format(hits, format(pooled, active.id, active.dim)) INTO ids, products, distances, boxed
                USING query, rows_k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
            IF coalesce(cardinality(ids), 0) = rows_k THEN
                strategy := format('hnsw_iterative (pool %s, ef_search %s)', pool, ef_search);
            ELSE
                EXECUTE format(hits, format(exact, active.id, active.dim)) INTO ids, products, distances, boxed
                    USING query, rows_k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
                strategy := 'exact (the pool came short)';
            END IF;
        END IF;
        EXIT WHEN NOT regioned;
        -- each image (of a product) once, by min(its whole row's distance, its best region's +
        -- the margin), placed once no row beyond those fetched could place it higher
        last := CASE WHEN coalesce(cardinality(ids), 0) = rows_k AND rows_k < 4000
                     THEN distances[rows_k] END;
        SELECT array_agg(b.id ORDER BY b.placed, b.n), array_agg(b.product ORDER BY b.placed, b.n),
               array_agg(b.distance ORDER BY b.placed, b.n)
        INTO ids, products, distances
        FROM (SELECT DISTINCT ON (u.id, u.product) u.id, u.product, u.distance, u.n,
                     u.distance + CASE WHEN u.boxed THEN margin::double precision ELSE 0 END AS placed
              FROM unnest(ids, products, distances, boxed) WITH ORDINALITY AS u(id, product, distance, boxed, n)
              ORDER BY u.id, u.product, placed, u.n) AS b
        WHERE last IS NULL OR b.placed <= last;
        EXIT WHEN last IS NULL OR coalesce(cardinality(ids), 0) >= k;
        rows_k := least(4000, 4 * rows_k);  -- many rows an image: a wider pool
    END LOOP;
    RAISE DEBUG 'imgsearch._search: %', strategy;
    RETURN QUERY SELECT * FROM unnest(ids[1:k], products[1:k], distances[1:k]);
END
$function$;
