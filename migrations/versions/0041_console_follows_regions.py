"""The SQL console follows region rows (issue 71).

* ``imgsearch._search`` (behind ``search_vector``, ``search_similar``, ``search_similar_product``,
  ``search_text`` and the semantic side of ``search_hybrid``): where a region rule is on, the
  statements fetch a pool of rows, each with its box, and each image (of a product) comes once,
  ranked by the closer of its whole row's distance and its best region's plus the margin
  (``imgsearch.region_margin``, default 0.16: the library's ``IMGSEARCH_REGION_MARGIN``); the
  pool widens until k images are certain, as the library's search does. With no rule on, the
  statements run as before.
* ``imgsearch.search_hybrid``: a product's image is shown by its whole row.
* ``imgsearch._regions_on()``: whether a rule is on, for every role (a tenant's console login
  among them), which reads no rule itself (SECURITY DEFINER, a boolean).

The whole definitions are held here, upgrade and downgrade (imgsearch/db/sql/functions/;
written by imgsearch/search/console.py).

Revision ID: 0041
Revises: 0040
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0041"
down_revision: str | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION imgsearch._regions_on()
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- PL/pgSQL, not BEGIN ATOMIC: a Citus cluster shares every function of the schema with its
    -- workers, and one that depended on the rules (a table of the coordinator's) couldn't be
    RETURN EXISTS (SELECT 1 FROM imgsearch.region_rules r WHERE r.source <> 'off');
END
$function$;

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
            EXECUTE format(counted_hits, format(CASE WHEN ef_search <= 1000 THEN filtered ELSE filtered_exact END,
                                                active.id, active.dim))
                INTO ids, products, distances, boxed, matching, bound, total, source
                USING query, rows_k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
            IF source = 'hnsw' THEN
                strategy := 'hnsw';
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

CREATE OR REPLACE FUNCTION imgsearch.search_hybrid(query text, k integer DEFAULT 10, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric, rrf_k double precision DEFAULT 60)
 RETURNS TABLE(image_id bigint, product_id text, title text, brand text, relevance double precision, semantic_rank integer, lexical_rank integer, distance double precision)
 LANGUAGE plpgsql
AS $function$
-- Written by imgsearch/search/console.py: the statements are the library's
-- (imgsearch.search.lexical.fused_statement), the order imgsearch.search.hybrid.run's. Edit
-- them, then: python -m imgsearch.search.console --write
DECLARE
    q record;
    qv halfvec;
    shop text := imgsearch._shop(search_hybrid.tenant);
    n int;
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(query);
    -- a price bound in price_units: within the stored range, rounded inwards (search.filters;
    -- NULL: no bound, and greatest and least pass over a NULL)
    units_min bigint := CASE WHEN price_min IS NOT NULL
                             THEN ceil(least(greatest(price_min, -10000000000), 10000000000) * 10000)::bigint END;
    units_max bigint := CASE WHEN price_max IS NOT NULL
                             THEN floor(least(greatest(price_max, -10000000000), 10000000000) * 10000)::bigint END;
    exclude bigint;
    exclude_product bigint;
    model_id smallint := (SELECT m.id FROM imgsearch.models m WHERE m.active);
    s_images bigint[];
    s_products text[];
    s_tenants text[];
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
    hit record;
    r_images bigint[] := '{}';
    r_products text[] := '{}';
    r_tenants text[] := '{}';
    boosted boolean := false;
    -- Reciprocal Rank Fusion of the two sides' products, each with its best image: a shop's,
    -- then every shop's (each product's best row by DISTINCT ON, the boosts joined, as Citus
    -- needs), each with the learned boosts and without
    fused constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id AND ($4 IS NULL OR imgsearch.products.tenant = $4)),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($4 IS NULL OR imgsearch.products.tenant = $4) AND ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4) AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance
FROM (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk ORDER BY coalesce(coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0), 0) DESC, product_pk
 LIMIT $2 OFFSET 0) AS fused JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND ($4 IS NULL OR imgsearch.products.tenant = $4) JOIN LATERAL (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.product_pk = fused.product_pk AND imgsearch.embeddings.model_id = %1$s AND imgsearch.embeddings.region = 0 AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1
 LIMIT 1) AS best ON true ORDER BY fused.relevance DESC, fused.product_pk$sql$;
    fused_boosted constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id AND ($4 IS NULL OR imgsearch.products.tenant = $4)),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($4 IS NULL OR imgsearch.products.tenant = $4) AND ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4) AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance, fused.boost
FROM (SELECT scored.product_pk AS product_pk, scored.image_id AS image_id, scored.semantic_rank AS semantic_rank, scored.lexical_rank AS lexical_rank, scored.relevance AS relevance, scored.boost AS boost, scored.place AS place
FROM (SELECT every.product_pk AS product_pk, every.image_id AS image_id, every.semantic_rank AS semantic_rank, every.lexical_rank AS lexical_rank, every.relevance AS relevance, coalesce((SELECT imgsearch.boosts.boost
FROM imgsearch.boosts
WHERE imgsearch.boosts.product_pk = every.product_pk AND ($4 IS NULL OR imgsearch.boosts.tenant = $4) AND imgsearch.boosts.query_norm = $20), $22 * (SELECT imgsearch.boosts.boost
FROM imgsearch.boosts
WHERE imgsearch.boosts.product_pk = every.product_pk AND ($4 IS NULL OR imgsearch.boosts.tenant = $4) AND imgsearch.boosts.query_norm = ''), 0.0) AS boost, row_number() OVER (ORDER BY coalesce(every.relevance, 0) DESC, every.product_pk) AS place
FROM (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk) AS every) AS scored ORDER BY scored.place - $21 * scored.boost, scored.boost DESC, scored.place
 LIMIT $2 OFFSET 0) AS fused JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND ($4 IS NULL OR imgsearch.products.tenant = $4) JOIN LATERAL (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.product_pk = fused.product_pk AND imgsearch.embeddings.model_id = %1$s AND imgsearch.embeddings.region = 0 AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1
 LIMIT 1) AS best ON true ORDER BY fused.place - $21 * fused.boost, fused.boost DESC, fused.place$sql$;
    fused_everywhere constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance
FROM (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk ORDER BY coalesce(coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0), 0) DESC, product_pk
 LIMIT $2 OFFSET 0) AS fused JOIN (SELECT DISTINCT ON (imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk) imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.product_pk AS product_pk
FROM imgsearch.embeddings JOIN (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk ORDER BY coalesce(coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0), 0) DESC, product_pk
 LIMIT $2 OFFSET 0) AS fused ON imgsearch.embeddings.product_pk = fused.product_pk
WHERE imgsearch.embeddings.model_id = %1$s AND imgsearch.embeddings.region = 0 AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk, CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1) AS best ON best.product_pk = fused.product_pk JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND imgsearch.products.tenant = best.tenant ORDER BY fused.relevance DESC, fused.product_pk$sql$;
    fused_everywhere_boosted constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3),
every AS MATERIALIZED
(SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance, fused.boost
FROM (SELECT scored.product_pk AS product_pk, scored.image_id AS image_id, scored.semantic_rank AS semantic_rank, scored.lexical_rank AS lexical_rank, scored.relevance AS relevance, scored.boost AS boost, scored.place AS place
FROM (SELECT every.product_pk AS product_pk, every.image_id AS image_id, every.semantic_rank AS semantic_rank, every.lexical_rank AS lexical_rank, every.relevance AS relevance, coalesce(query_boost.boost, $22 * product_boost.boost, 0.0) AS boost, row_number() OVER (ORDER BY coalesce(every.relevance, 0) DESC, every.product_pk) AS place
FROM every LEFT OUTER JOIN imgsearch.boosts AS query_boost ON query_boost.product_pk = every.product_pk AND query_boost.query_norm = $20 LEFT OUTER JOIN imgsearch.boosts AS product_boost ON product_boost.product_pk = every.product_pk AND product_boost.query_norm = '') AS scored ORDER BY scored.place - $21 * scored.boost, scored.boost DESC, scored.place
 LIMIT $2 OFFSET 0) AS fused JOIN (SELECT DISTINCT ON (imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk) imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.product_pk AS product_pk
FROM imgsearch.embeddings JOIN (SELECT scored.product_pk AS product_pk, scored.image_id AS image_id, scored.semantic_rank AS semantic_rank, scored.lexical_rank AS lexical_rank, scored.relevance AS relevance, scored.boost AS boost, scored.place AS place
FROM (SELECT every.product_pk AS product_pk, every.image_id AS image_id, every.semantic_rank AS semantic_rank, every.lexical_rank AS lexical_rank, every.relevance AS relevance, coalesce(query_boost.boost, $22 * product_boost.boost, 0.0) AS boost, row_number() OVER (ORDER BY coalesce(every.relevance, 0) DESC, every.product_pk) AS place
FROM every LEFT OUTER JOIN imgsearch.boosts AS query_boost ON query_boost.product_pk = every.product_pk AND query_boost.query_norm = $20 LEFT OUTER JOIN imgsearch.boosts AS product_boost ON product_boost.product_pk = every.product_pk AND product_boost.query_norm = '') AS scored ORDER BY scored.place - $21 * scored.boost, scored.boost DESC, scored.place
 LIMIT $2 OFFSET 0) AS fused ON imgsearch.embeddings.product_pk = fused.product_pk
WHERE imgsearch.embeddings.model_id = %1$s AND imgsearch.embeddings.region = 0 AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk, CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1) AS best ON best.product_pk = fused.product_pk JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND imgsearch.products.tenant = best.tenant ORDER BY fused.place - $21 * fused.boost, fused.boost DESC, fused.place$sql$;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rrf_k IS NULL OR NOT rrf_k > 0 OR rrf_k = 'Infinity' THEN
        RAISE EXCEPTION 'rrf_k must be a number above 0, got %', coalesce(rrf_k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    -- each side's products (imgsearch.search.hybrid.candidates)
    n := least(2000, greatest(50, 2 * k, k + lift));
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce(search_hybrid.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));
    qv := l2_normalize(q.embedding)::halfvec;
    -- the semantic side: the nearest n images (a statement of its own: on Citus, _search
    -- queries the cluster), their products in the order of their best image, with their tenants
    -- (an inner join: Citus sends it to the shards with the ids)
    SELECT array_agg(s.image_id ORDER BY s.place), array_agg(s.product_id ORDER BY s.place)
    INTO s_images, s_products
    FROM imgsearch._search(qv, n, shop, search_hybrid.category, price_min, price_max, NULL)
         WITH ORDINALITY AS s(image_id, product_id, distance, place);
    SELECT array_agg(b.image_id ORDER BY b.place), array_agg(b.product_id ORDER BY b.place),
           array_agg(b.tenant ORDER BY b.place)
    INTO s_images, s_products, s_tenants
    FROM (SELECT DISTINCT ON (i.tenant, h.product_id) h.image_id, h.product_id, i.tenant, h.place
          FROM unnest(s_images, s_products) WITH ORDINALITY AS h(image_id, product_id, place)
          JOIN imgsearch.images i ON i.id = h.image_id AND (shop IS NULL OR i.tenant = shop)
          ORDER BY i.tenant, h.product_id, h.place) AS b;
    -- the lexical side's matches: lexical_match reads the products itself
    SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
    INTO m_pks, m_exact, m_ranks, m_similarities
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;
    FOR hit IN EXECUTE format(CASE WHEN shop IS NULL AND lift > 0 THEN fused_everywhere_boosted
                                   WHEN shop IS NULL THEN fused_everywhere
                                   WHEN lift > 0 THEN fused_boosted ELSE fused END, coalesce(model_id, 0))
        USING qv, k, n, shop, category, units_min, units_max, exclude, exclude_product, m_pks, m_exact, m_ranks, m_similarities, s_tenants, s_products, s_images, rrf_k, 1.0::double precision, 1.0::double precision, norm, lift::double precision, weight
    LOOP
        image_id := hit.image_id;
        product_id := hit.product_id;
        title := hit.title;
        brand := hit.brand;
        relevance := hit.relevance;
        semantic_rank := hit.semantic_rank;
        lexical_rank := hit.lexical_rank;
        distance := hit.distance;
        r_images := r_images || hit.image_id;
        r_products := r_products || hit.product_id;
        r_tenants := r_tenants || hit.tenant;
        IF lift > 0 THEN  -- (only the boosted statements have the column)
            boosted := boosted OR hit.boost > 0;
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM imgsearch._record_search(
        search_hybrid.tenant, query,
        jsonb_build_object(
            'kind', 'text', 'mode', 'hybrid', 'k', k, 'boost', boosted,
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', search_hybrid.category, 'price_min', price_min, 'price_max', price_max))),
        r_tenants, r_products, r_images);
END
$function$;
"""

PREVIOUS = r"""
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
    hits constant text := 'SELECT array_agg(s.image_id ORDER BY s.distance), array_agg(s.product_id ORDER BY s.distance),'
        ' array_agg(s.distance ORDER BY s.distance) FROM (%s) s';
    counted_hits constant text := 'SELECT array_agg(s.image_id ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' array_agg(s.product_id ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' array_agg(s.distance ORDER BY s.distance) FILTER (WHERE s.source IS NOT NULL),'
        ' max(s.matching), max(s.bound), max(s.total), max(s.source) FROM (%s) s';
    -- plans.reltuples: the catalog's row estimate
    total_rows constant text := $sql$SELECT coalesce((SELECT CAST(greatest(pg_catalog.pg_class.reltuples, 1) AS BIGINT) AS greatest_1
FROM pg_catalog.pg_class
WHERE pg_catalog.pg_class.oid = 'imgsearch.embeddings'::regclass), 1) AS coalesce_1$sql$;
    -- statements.exact_bound: the most rows an exact scan may take
    exact_rows constant text := $sql$SELECT CAST(greatest(1500, ceil(0.15 * $10), $2) AS BIGINT) AS greatest_1$sql$;
    -- statements.hnsw_statement: the matching rows among the ef_search nearest
    one_pass constant text := $sql$SELECT imgsearch.embeddings.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, imgsearch.embeddings.tenant, imgsearch.embeddings.category, imgsearch.embeddings.price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance
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
(SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance
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
 SELECT CASE WHEN (few.matching <= 1500) THEN few.matching WHEN (many.matching > 0) THEN many.matching ELSE -1 END AS matching, limits.bound, limits.total, hits.source, hits.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, hits.tenant, hits.category, hits.price, hits.distance
FROM few JOIN many ON true JOIN limits ON true LEFT OUTER JOIN (SELECT 'hnsw' AS source, one_pass.image_id AS image_id, one_pass.product_pk AS product_pk, one_pass.tenant AS tenant, one_pass.category AS category, one_pass.price AS price, one_pass.distance AS distance
FROM one_pass
WHERE (SELECT count(*) AS count_1
FROM one_pass) >= $2 UNION ALL SELECT 'exact' AS source, exact.image_id AS image_id, exact.product_pk AS product_pk, exact.tenant AS tenant, exact.category AS category, exact.price AS price, exact.distance AS distance
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
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
 SELECT CASE WHEN (few.matching <= 1500) THEN few.matching WHEN (many.matching > 0) THEN many.matching ELSE -1 END AS matching, limits.bound, limits.total, hits.source, hits.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, hits.tenant, hits.category, hits.price, hits.distance
FROM few JOIN many ON true JOIN limits ON true LEFT OUTER JOIN (SELECT 'exact' AS source, exact.image_id AS image_id, exact.product_pk AS product_pk, exact.tenant AS tenant, exact.category AS category, exact.price AS price, exact.distance AS distance
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) AND ((SELECT few.matching
FROM few) <= 1500 OR (SELECT few.matching
FROM few) > 1500 AND (SELECT many.matching
FROM many) <= $11) ORDER BY imgsearch.embeddings.embedding <=> $1
 LIMIT $2) AS exact) AS hits ON true LEFT OUTER JOIN imgsearch.products ON imgsearch.products.id = hits.product_pk AND imgsearch.products.tenant = hits.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)$sql$;
    -- statements.pooled_statement: a relaxed iterative scan's pool, re-sorted exactly
    pooled constant text := $sql$WITH pool AS MATERIALIZED
(SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.products.product_id AS product_id, imgsearch.products.title AS title, imgsearch.products.brand AS brand, imgsearch.products.currency AS currency, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1 AS distance
FROM imgsearch.embeddings JOIN imgsearch.products ON imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4)
WHERE imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CAST(imgsearch.embeddings.embedding AS halfvec(%2$s)) <=> $1
 LIMIT $3)
 SELECT pool.image_id, pool.product_id, pool.title, pool.brand, pool.currency, pool.tenant, pool.category, pool.price, pool.distance
FROM pool ORDER BY pool.distance + 0
 LIMIT $2$sql$;
    -- statements.exact_statement: every matching row's distance
    exact constant text := $sql$SELECT top.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, top.tenant, top.category, top.price, top.distance
FROM (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.product_pk AS product_pk, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
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
    IF imgsearch._citus() THEN
        PERFORM imgsearch._begin_distributed();
    END IF;
    EXECUTE total_rows INTO total;
    EXECUTE exact_rows INTO bound USING query, k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
    min_ef := CASE WHEN total <= 100000 THEN 200
                   ELSE least(1000, ceil(200 * (total / 100000.0) ^ 0.3))::int END;
    -- plans.one_pass_plan (none past 1000)
    ef_search := greatest(min_ef, 2 * k);
    PERFORM imgsearch._set_local('hnsw.ef_search', CASE WHEN ef_search <= 1000 THEN ef_search ELSE min_ef END::text);
    PERFORM imgsearch._set_local('hnsw.iterative_scan', 'off');

    IF NOT has_filters AND ef_search <= 1000 THEN
        EXECUTE format(hits, format(one_pass, active.id, active.dim)) INTO ids, products, distances
            USING query, k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
        IF coalesce(cardinality(ids), 0) >= k THEN
            strategy := 'hnsw';
        END IF;
    ELSIF has_filters THEN
        EXECUTE format(counted_hits, format(CASE WHEN ef_search <= 1000 THEN filtered ELSE filtered_exact END,
                                            active.id, active.dim))
            INTO ids, products, distances, matching, bound, total, source
            USING query, k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
        IF source = 'hnsw' THEN
            strategy := 'hnsw';
        ELSIF 0 <= matching AND matching <= bound THEN
            strategy := format('exact (%s rows match)', matching);
        END IF;
    END IF;

    -- plans.iterative_plan: a relaxed scan collects a pool; an exact scan if even it comes short
    IF strategy IS NULL THEN
        ef_search := least(1000, greatest(min_ef, 2 * k));
        max_scan_tuples := least(greatest(20000, total), 10000000);
        pool := least(4000, greatest(200, 4 * k));
        PERFORM imgsearch._set_local('hnsw.ef_search', ef_search::text);
        PERFORM imgsearch._set_local('hnsw.iterative_scan', 'relaxed_order');
        PERFORM imgsearch._set_local('hnsw.max_scan_tuples', max_scan_tuples::text);
        PERFORM imgsearch._set_local('hnsw.scan_mem_multiplier', '4');
        EXECUTE format(hits, format(pooled, active.id, active.dim)) INTO ids, products, distances
            USING query, k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
        IF coalesce(cardinality(ids), 0) = k THEN
            strategy := format('hnsw_iterative (pool %s, ef_search %s)', pool, ef_search);
        ELSE
            EXECUTE format(hits, format(exact, active.id, active.dim)) INTO ids, products, distances
                USING query, k, pool, tenant, category, units_min, units_max, exclude, exclude_product, total, bound;
            strategy := 'exact (the pool came short)';
        END IF;
    END IF;
    RAISE DEBUG 'imgsearch._search: %', strategy;
    RETURN QUERY SELECT * FROM unnest(ids, products, distances);
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch.search_hybrid(query text, k integer DEFAULT 10, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric, rrf_k double precision DEFAULT 60)
 RETURNS TABLE(image_id bigint, product_id text, title text, brand text, relevance double precision, semantic_rank integer, lexical_rank integer, distance double precision)
 LANGUAGE plpgsql
AS $function$
-- Written by imgsearch/search/console.py: the statements are the library's
-- (imgsearch.search.lexical.fused_statement), the order imgsearch.search.hybrid.run's. Edit
-- them, then: python -m imgsearch.search.console --write
DECLARE
    q record;
    qv halfvec;
    shop text := imgsearch._shop(search_hybrid.tenant);
    n int;
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(query);
    -- a price bound in price_units: within the stored range, rounded inwards (search.filters;
    -- NULL: no bound, and greatest and least pass over a NULL)
    units_min bigint := CASE WHEN price_min IS NOT NULL
                             THEN ceil(least(greatest(price_min, -10000000000), 10000000000) * 10000)::bigint END;
    units_max bigint := CASE WHEN price_max IS NOT NULL
                             THEN floor(least(greatest(price_max, -10000000000), 10000000000) * 10000)::bigint END;
    exclude bigint;
    exclude_product bigint;
    model_id smallint := (SELECT m.id FROM imgsearch.models m WHERE m.active);
    s_images bigint[];
    s_products text[];
    s_tenants text[];
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
    hit record;
    r_images bigint[] := '{}';
    r_products text[] := '{}';
    r_tenants text[] := '{}';
    boosted boolean := false;
    -- Reciprocal Rank Fusion of the two sides' products, each with its best image: a shop's,
    -- then every shop's (each product's best row by DISTINCT ON, the boosts joined, as Citus
    -- needs), each with the learned boosts and without
    fused constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id AND ($4 IS NULL OR imgsearch.products.tenant = $4)),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($4 IS NULL OR imgsearch.products.tenant = $4) AND ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4) AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance
FROM (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk ORDER BY coalesce(coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0), 0) DESC, product_pk
 LIMIT $2 OFFSET 0) AS fused JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND ($4 IS NULL OR imgsearch.products.tenant = $4) JOIN LATERAL (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.product_pk = fused.product_pk AND imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1
 LIMIT 1) AS best ON true ORDER BY fused.relevance DESC, fused.product_pk$sql$;
    fused_boosted constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id AND ($4 IS NULL OR imgsearch.products.tenant = $4)),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($4 IS NULL OR imgsearch.products.tenant = $4) AND ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($4 IS NULL OR imgsearch.products.tenant = $4) AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance, fused.boost
FROM (SELECT scored.product_pk AS product_pk, scored.image_id AS image_id, scored.semantic_rank AS semantic_rank, scored.lexical_rank AS lexical_rank, scored.relevance AS relevance, scored.boost AS boost, scored.place AS place
FROM (SELECT every.product_pk AS product_pk, every.image_id AS image_id, every.semantic_rank AS semantic_rank, every.lexical_rank AS lexical_rank, every.relevance AS relevance, coalesce((SELECT imgsearch.boosts.boost
FROM imgsearch.boosts
WHERE imgsearch.boosts.product_pk = every.product_pk AND ($4 IS NULL OR imgsearch.boosts.tenant = $4) AND imgsearch.boosts.query_norm = $20), $22 * (SELECT imgsearch.boosts.boost
FROM imgsearch.boosts
WHERE imgsearch.boosts.product_pk = every.product_pk AND ($4 IS NULL OR imgsearch.boosts.tenant = $4) AND imgsearch.boosts.query_norm = ''), 0.0) AS boost, row_number() OVER (ORDER BY coalesce(every.relevance, 0) DESC, every.product_pk) AS place
FROM (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk) AS every) AS scored ORDER BY scored.place - $21 * scored.boost, scored.boost DESC, scored.place
 LIMIT $2 OFFSET 0) AS fused JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND ($4 IS NULL OR imgsearch.products.tenant = $4) JOIN LATERAL (SELECT imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance
FROM imgsearch.embeddings
WHERE imgsearch.embeddings.product_pk = fused.product_pk AND imgsearch.embeddings.model_id = %1$s AND ($4 IS NULL OR imgsearch.embeddings.tenant = $4) AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1
 LIMIT 1) AS best ON true ORDER BY fused.place - $21 * fused.boost, fused.boost DESC, fused.place$sql$;
    fused_everywhere constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance
FROM (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk ORDER BY coalesce(coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0), 0) DESC, product_pk
 LIMIT $2 OFFSET 0) AS fused JOIN (SELECT DISTINCT ON (imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk) imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.product_pk AS product_pk
FROM imgsearch.embeddings JOIN (SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk ORDER BY coalesce(coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0), 0) DESC, product_pk
 LIMIT $2 OFFSET 0) AS fused ON imgsearch.embeddings.product_pk = fused.product_pk
WHERE imgsearch.embeddings.model_id = %1$s AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk, CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1) AS best ON best.product_pk = fused.product_pk JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND imgsearch.products.tenant = best.tenant ORDER BY fused.relevance DESC, fused.product_pk$sql$;
    fused_everywhere_boosted constant text := $sql$WITH semantic AS
(SELECT imgsearch.products.id AS product_pk, sem_rows.image_id AS image_id, sem_rows.rank AS rank
FROM unnest($14, $15, $16) WITH ORDINALITY AS sem_rows(tenant, product_id, image_id, rank) JOIN imgsearch.products ON imgsearch.products.tenant = sem_rows.tenant AND imgsearch.products.product_id = sem_rows.product_id),
lexical AS
(SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($10, $11, $12, $13) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($5 IS NULL OR imgsearch.products.category = $5) AND ($6 IS NULL OR imgsearch.products.price_units >= $6) AND ($7 IS NULL OR imgsearch.products.price_units <= $7) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND imgsearch.embeddings.model_id = %1$s AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $3),
every AS MATERIALIZED
(SELECT coalesce(semantic.product_pk, lexical.product_pk) AS product_pk, semantic.image_id AS image_id, semantic.rank AS semantic_rank, lexical.rank AS lexical_rank, coalesce($18 / CAST(($17 + semantic.rank) AS FLOAT), 0.0) + coalesce($19 / CAST(($17 + lexical.rank) AS FLOAT), 0.0) AS relevance
FROM semantic FULL OUTER JOIN lexical ON lexical.product_pk = semantic.product_pk)
 SELECT best.image_id, imgsearch.products.product_id, imgsearch.products.title, imgsearch.products.brand, imgsearch.products.currency, best.tenant, best.category, best.price, best.distance, CAST(fused.semantic_rank AS INTEGER) AS semantic_rank, CAST(fused.lexical_rank AS INTEGER) AS lexical_rank, fused.relevance, fused.boost
FROM (SELECT scored.product_pk AS product_pk, scored.image_id AS image_id, scored.semantic_rank AS semantic_rank, scored.lexical_rank AS lexical_rank, scored.relevance AS relevance, scored.boost AS boost, scored.place AS place
FROM (SELECT every.product_pk AS product_pk, every.image_id AS image_id, every.semantic_rank AS semantic_rank, every.lexical_rank AS lexical_rank, every.relevance AS relevance, coalesce(query_boost.boost, $22 * product_boost.boost, 0.0) AS boost, row_number() OVER (ORDER BY coalesce(every.relevance, 0) DESC, every.product_pk) AS place
FROM every LEFT OUTER JOIN imgsearch.boosts AS query_boost ON query_boost.product_pk = every.product_pk AND query_boost.query_norm = $20 LEFT OUTER JOIN imgsearch.boosts AS product_boost ON product_boost.product_pk = every.product_pk AND product_boost.query_norm = '') AS scored ORDER BY scored.place - $21 * scored.boost, scored.boost DESC, scored.place
 LIMIT $2 OFFSET 0) AS fused JOIN (SELECT DISTINCT ON (imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk) imgsearch.embeddings.image_id AS image_id, imgsearch.embeddings.tenant AS tenant, imgsearch.embeddings.category AS category, imgsearch.embeddings.price AS price, imgsearch.embeddings.embedding <=> $1 AS distance, imgsearch.embeddings.product_pk AS product_pk
FROM imgsearch.embeddings JOIN (SELECT scored.product_pk AS product_pk, scored.image_id AS image_id, scored.semantic_rank AS semantic_rank, scored.lexical_rank AS lexical_rank, scored.relevance AS relevance, scored.boost AS boost, scored.place AS place
FROM (SELECT every.product_pk AS product_pk, every.image_id AS image_id, every.semantic_rank AS semantic_rank, every.lexical_rank AS lexical_rank, every.relevance AS relevance, coalesce(query_boost.boost, $22 * product_boost.boost, 0.0) AS boost, row_number() OVER (ORDER BY coalesce(every.relevance, 0) DESC, every.product_pk) AS place
FROM every LEFT OUTER JOIN imgsearch.boosts AS query_boost ON query_boost.product_pk = every.product_pk AND query_boost.query_norm = $20 LEFT OUTER JOIN imgsearch.boosts AS product_boost ON product_boost.product_pk = every.product_pk AND product_boost.query_norm = '') AS scored ORDER BY scored.place - $21 * scored.boost, scored.boost DESC, scored.place
 LIMIT $2 OFFSET 0) AS fused ON imgsearch.embeddings.product_pk = fused.product_pk
WHERE imgsearch.embeddings.model_id = %1$s AND ($5 IS NULL OR imgsearch.embeddings.category = $5) AND ($6 IS NULL OR imgsearch.embeddings.price_units >= $6) AND ($7 IS NULL OR imgsearch.embeddings.price_units <= $7) AND ($8 IS NULL OR imgsearch.embeddings.image_id != $8) AND ($9 IS NULL OR imgsearch.embeddings.product_pk != $9) ORDER BY imgsearch.embeddings.tenant, imgsearch.embeddings.product_pk, CASE WHEN (imgsearch.embeddings.image_id = fused.image_id) THEN 0 ELSE 1 END, imgsearch.embeddings.embedding <=> $1) AS best ON best.product_pk = fused.product_pk JOIN imgsearch.products ON imgsearch.products.id = fused.product_pk AND imgsearch.products.tenant = best.tenant ORDER BY fused.place - $21 * fused.boost, fused.boost DESC, fused.place$sql$;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rrf_k IS NULL OR NOT rrf_k > 0 OR rrf_k = 'Infinity' THEN
        RAISE EXCEPTION 'rrf_k must be a number above 0, got %', coalesce(rrf_k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    -- each side's products (imgsearch.search.hybrid.candidates)
    n := least(2000, greatest(50, 2 * k, k + lift));
    SELECT * INTO q FROM imgsearch._text_embedding(query);
    q.embedding := imgsearch.adapted(q.embedding,
        coalesce(search_hybrid.tenant, imgsearch.login_tenant(), imgsearch.current_tenant()));
    qv := l2_normalize(q.embedding)::halfvec;
    -- the semantic side: the nearest n images (a statement of its own: on Citus, _search
    -- queries the cluster), their products in the order of their best image, with their tenants
    -- (an inner join: Citus sends it to the shards with the ids)
    SELECT array_agg(s.image_id ORDER BY s.place), array_agg(s.product_id ORDER BY s.place)
    INTO s_images, s_products
    FROM imgsearch._search(qv, n, shop, search_hybrid.category, price_min, price_max, NULL)
         WITH ORDINALITY AS s(image_id, product_id, distance, place);
    SELECT array_agg(b.image_id ORDER BY b.place), array_agg(b.product_id ORDER BY b.place),
           array_agg(b.tenant ORDER BY b.place)
    INTO s_images, s_products, s_tenants
    FROM (SELECT DISTINCT ON (i.tenant, h.product_id) h.image_id, h.product_id, i.tenant, h.place
          FROM unnest(s_images, s_products) WITH ORDINALITY AS h(image_id, product_id, place)
          JOIN imgsearch.images i ON i.id = h.image_id AND (shop IS NULL OR i.tenant = shop)
          ORDER BY i.tenant, h.product_id, h.place) AS b;
    -- the lexical side's matches: lexical_match reads the products itself
    SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
    INTO m_pks, m_exact, m_ranks, m_similarities
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;
    FOR hit IN EXECUTE format(CASE WHEN shop IS NULL AND lift > 0 THEN fused_everywhere_boosted
                                   WHEN shop IS NULL THEN fused_everywhere
                                   WHEN lift > 0 THEN fused_boosted ELSE fused END, coalesce(model_id, 0))
        USING qv, k, n, shop, category, units_min, units_max, exclude, exclude_product, m_pks, m_exact, m_ranks, m_similarities, s_tenants, s_products, s_images, rrf_k, 1.0::double precision, 1.0::double precision, norm, lift::double precision, weight
    LOOP
        image_id := hit.image_id;
        product_id := hit.product_id;
        title := hit.title;
        brand := hit.brand;
        relevance := hit.relevance;
        semantic_rank := hit.semantic_rank;
        lexical_rank := hit.lexical_rank;
        distance := hit.distance;
        r_images := r_images || hit.image_id;
        r_products := r_products || hit.product_id;
        r_tenants := r_tenants || hit.tenant;
        IF lift > 0 THEN  -- (only the boosted statements have the column)
            boosted := boosted OR hit.boost > 0;
        END IF;
        RETURN NEXT;
    END LOOP;
    PERFORM imgsearch._record_search(
        search_hybrid.tenant, query,
        jsonb_build_object(
            'kind', 'text', 'mode', 'hybrid', 'k', k, 'boost', boosted,
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', search_hybrid.category, 'price_min', price_min, 'price_max', price_max))),
        r_tenants, r_products, r_images);
END
$function$;
"""


def _each(functions: str) -> list[str]:
    """The definitions of ``functions``, one by one (Citus sends a distributed function's whole
    query string to its workers)."""
    return [f"CREATE OR REPLACE FUNCTION{part}" for part in functions.split("CREATE OR REPLACE FUNCTION")[1:]]


def upgrade() -> None:
    for function in _each(FUNCTIONS):
        definitions.run(op.get_bind(), function)


def downgrade() -> None:
    for function in _each(PREVIOUS):
        definitions.run(op.get_bind(), function)
    op.execute("DROP FUNCTION imgsearch._regions_on()")
