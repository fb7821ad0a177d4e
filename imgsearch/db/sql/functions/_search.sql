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
AS $function$
DECLARE
    -- imgsearch.search: EXACT_MAX_ROWS, EXACT_MAX_FRACTION, MIN_EF_SEARCH, MAX_EF_SEARCH,
    -- MIN_SCAN_TUPLES, MIN_POOL and MAX_POOL at their defaults
    exact_max_rows constant int := 1500;
    exact_max_fraction constant numeric := 0.15;
    ef_search constant int := greatest(200, 2 * k);
    active record;
    images smallint := CASE WHEN for_images THEN imgsearch._image_model_id() END;  -- read first (Citus)
    total bigint;
    bound bigint;
    matching bigint;
    has_filters boolean := num_nulls(tenant, category, price_min, price_max, exclude, exclude_product) < 6;
    strategy text;
    ids bigint[];
    pks bigint[];
    distances double precision[];
    -- the filters read embeddings alone (migration 0004); products are joined to the k hits only
    filtered text := ' FROM imgsearch.embeddings e'
        ' WHERE e.model_id = %1$s'
        ' AND ($1::text IS NULL OR e.tenant = $1)'
        ' AND ($2::text IS NULL OR e.category = $2)'
        ' AND ($3::numeric IS NULL OR e.price_units >= ceil(least(greatest($3, -1e10), 1e10) * 10000)::bigint)'
        ' AND ($4::numeric IS NULL OR e.price_units <= floor(least(greatest($4, -1e10), 1e10) * 10000)::bigint)'
        ' AND ($5::bigint IS NULL OR e.image_id <> $5)'
        ' AND ($7::bigint IS NULL OR e.product_pk <> $7)';
    counted text := 'SELECT count(*) FROM (SELECT 1' || filtered || ' LIMIT %2$s) s';
    hits text := 'SELECT array_agg(image_id ORDER BY distance), array_agg(product_pk ORDER BY distance),'
        ' array_agg(distance ORDER BY distance) FROM ';
    -- the first %3$s matching rows through the model's HNSW index, the nearest %4$s of them,
    -- re-sorted: MATERIALIZED and "+ 0", or PostgreSQL 17+ takes the scan's order (relaxed, for
    -- a pool) as sorted and keeps its first rows (pgvector's README)
    nearest text := 'WITH pool AS MATERIALIZED ('
        'SELECT e.image_id, e.product_pk, (e.embedding::halfvec(%2$s) <=> $6)::float8 AS distance'
        || filtered || ' ORDER BY e.embedding::halfvec(%2$s) <=> $6 LIMIT %3$s) '
        || hits || '(SELECT * FROM pool ORDER BY distance + 0 LIMIT %4$s) top';
    -- every matching row's distance (the uncast column: no HNSW index serves it)
    exact text := hits || '(SELECT e.image_id, e.product_pk, (e.embedding <=> $6)::float8 AS distance'
        || filtered || ' ORDER BY e.embedding <=> $6 LIMIT %2$s) top';
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
    SELECT greatest(c.reltuples, 1)::bigint INTO total FROM pg_class c
        WHERE c.oid = 'imgsearch.embeddings'::regclass;

    IF imgsearch._citus() THEN
        PERFORM imgsearch._begin_distributed();
        PERFORM imgsearch._set_local('hnsw.ef_search', '200');
        PERFORM imgsearch._set_local('hnsw.iterative_scan', 'off');
        PERFORM imgsearch._set_local('hnsw.max_scan_tuples', '20000');
        PERFORM imgsearch._set_local('hnsw.scan_mem_multiplier', '4');
    END IF;

    -- 1. few rows match: every matching row's distance (below)
    IF has_filters THEN
        EXECUTE format(counted, active.id, exact_max_rows + 1)
            INTO matching USING tenant, category, price_min, price_max, exclude, query, exclude_product;
        IF matching <= exact_max_rows THEN
            strategy := format('exact (%s rows match)', matching);
        END IF;
    END IF;

    -- 2. one HNSW pass: the matching rows among the ef_search nearest
    IF strategy IS NULL AND ef_search <= 1000 THEN
        PERFORM imgsearch._set_local('hnsw.ef_search', ef_search::text);
        EXECUTE format(nearest, active.id, active.dim, k, k)
            INTO ids, pks, distances USING tenant, category, price_min, price_max, exclude, query, exclude_product;
        IF coalesce(cardinality(ids), 0) = k THEN
            strategy := 'hnsw';
        END IF;
    END IF;

    -- 3. the pass came short, the filter's rows lie away from the query: exact up to a bound
    IF strategy IS NULL AND has_filters THEN
        bound := greatest(exact_max_rows, ceil(exact_max_fraction * total)::bigint, k);
        EXECUTE format(counted, active.id, bound + 1)
            INTO matching USING tenant, category, price_min, price_max, exclude, query, exclude_product;
        IF matching <= bound THEN
            strategy := format('exact (%s rows match, the pass came short)', matching);
        END IF;
    END IF;

    -- 4. a relaxed iterative scan fills a pool, re-sorted exactly; an exact scan if it comes short
    IF strategy IS NULL THEN
        PERFORM imgsearch._set_local('hnsw.ef_search', least(1000, ef_search)::text);
        PERFORM imgsearch._set_local('hnsw.iterative_scan', 'relaxed_order');
        PERFORM imgsearch._set_local('hnsw.max_scan_tuples', least(10000000, greatest(20000, total))::text);
        EXECUTE format(nearest, active.id, active.dim, least(4000, greatest(200, 4 * k)), k)
            INTO ids, pks, distances USING tenant, category, price_min, price_max, exclude, query, exclude_product;
        strategy := CASE WHEN coalesce(cardinality(ids), 0) = k THEN 'hnsw_iterative'
            ELSE 'exact (the pool came short)' END;
    END IF;

    IF strategy LIKE 'exact%' THEN
        EXECUTE format(exact, active.id, k)
            INTO ids, pks, distances USING tenant, category, price_min, price_max, exclude, query, exclude_product;
    END IF;
    RAISE DEBUG 'imgsearch._search: %', strategy;
    RETURN QUERY SELECT hit.i, p.product_id, hit.d
        FROM unnest(ids, pks, distances) WITH ORDINALITY AS hit (i, pk, d, n)
        JOIN imgsearch.products p ON p.id = hit.pk
            AND (_search.tenant IS NULL OR p.tenant = _search.tenant)
        ORDER BY hit.n;
END
$function$;
