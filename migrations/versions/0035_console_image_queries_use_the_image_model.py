"""The console's image queries use the catalog's image model (migration 0034): ``search_similar``
and ``search_similar_product`` read their source from it and search its vectors; text and vector
queries keep the active model.

- ``imgsearch._image_model_id()``: the model serving images beside the active one, else the active;
- ``imgsearch._search`` takes ``for_images`` (a new overload holding the whole search); the
  8-argument form calls it for the active model;
- ``imgsearch._answered`` passes it for ``similar_to`` and ``similar_to_product`` queries;
- ``imgsearch._similar_source`` and ``imgsearch._product_source`` read the image model's vectors.

Each definition is held whole (imgsearch/db/sql/functions/, docs/architecture.md "Where a console
function lives").

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

from imgsearch.db import definitions

revision: str = "0035"
down_revision: str | None = "0034"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IMAGE_MODEL_ID = r"""CREATE OR REPLACE FUNCTION imgsearch._image_model_id()
 RETURNS smallint
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT m.id
    FROM imgsearch.models m
   WHERE (m.serves_images OR m.active)
   ORDER BY m.serves_images DESC
  LIMIT 1;
END;
"""

SEARCH_FOR_IMAGES = r"""CREATE OR REPLACE FUNCTION imgsearch._search(query halfvec, k integer, tenant text, category text, price_min numeric, price_max numeric, exclude bigint, exclude_product bigint, for_images boolean)
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
"""

SEARCH = r"""CREATE OR REPLACE FUNCTION imgsearch._search(query halfvec, k integer, tenant text, category text, price_min numeric, price_max numeric, exclude bigint, exclude_product bigint)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT _search.image_id,
     _search.product_id,
     _search.distance
    FROM imgsearch._search(_search.query, _search.k, _search.tenant, _search.category, _search.price_min, _search.price_max, _search.exclude, _search.exclude_product, false) _search(image_id, product_id, distance);
END;
"""

ANSWERED = r"""CREATE OR REPLACE FUNCTION imgsearch._answered(source halfvec, want integer, in_tenant text, in_category text, in_price_min numeric, in_price_max numeric, exclude bigint, exclude_product bigint, user_query text, attributes jsonb)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    shop text := imgsearch._shop(in_tenant);
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(user_query);
    r_images bigint[];
    r_products text[];
    r_distances double precision[];
    r_tenants text[];
    r_boosts double precision[];
    places int[];
BEGIN
    IF want IS NULL OR want < 1 OR want > 1000 THEN
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(want::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    SELECT array_agg(s.image_id ORDER BY s.n), array_agg(s.product_id ORDER BY s.n),
           array_agg(s.distance ORDER BY s.n)
    INTO r_images, r_products, r_distances
    FROM imgsearch._search(source, least(1000, want + lift), shop, in_category, in_price_min, in_price_max,
                           exclude, exclude_product, attributes->>'kind' IN ('similar_to', 'similar_to_product'))
         WITH ORDINALITY AS s(image_id, product_id, distance, n);
    -- (an inner join: Citus sends it to the shards with the ids; an outer one reads every image)
    r_tenants := ARRAY(SELECT f.tenant FROM generate_series(1, coalesce(cardinality(r_images), 0)) AS g(n)
                       LEFT JOIN (SELECT h.n, i.tenant FROM unnest(r_images) WITH ORDINALITY AS h(id, n)
                                  JOIN imgsearch.images i ON i.id = h.id
                                  WHERE shop IS NULL OR i.tenant = shop) AS f ON f.n = g.n
                       ORDER BY g.n);
    IF lift > 0 THEN
        SELECT coalesce(array_agg(o.n ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}'),
               coalesce(array_agg(o.boost ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}')
        INTO places, r_boosts
        FROM (WITH learned AS (  -- the candidates' boosts (read first: an outer join would read them all)
                  SELECT b.tenant, b.product_id, b.query_norm, b.boost FROM imgsearch.boosts b
                  WHERE b.tenant = ANY (r_tenants) AND (shop IS NULL OR b.tenant = shop)
                    AND b.product_id = ANY (r_products) AND b.query_norm IN (norm, '')
              )
              SELECT h.n::int AS n, coalesce(bq.boost, weight * bp.boost, 0)::double precision AS boost
              FROM unnest(r_tenants, r_products) WITH ORDINALITY AS h(tenant, product_id, n)
              LEFT JOIN learned bq ON bq.tenant = h.tenant AND bq.query_norm = norm AND bq.product_id = h.product_id
              LEFT JOIN learned bp ON bp.tenant = h.tenant AND bp.query_norm = '' AND bp.product_id = h.product_id
             ) AS o;
    ELSE
        places := ARRAY(SELECT generate_series(1, coalesce(cardinality(r_images), 0)));
        r_boosts := array_fill(0::double precision, ARRAY[coalesce(cardinality(r_images), 0)]);
    END IF;
    places := places[1:want];
    PERFORM imgsearch._record_search(
        in_tenant, user_query,
        attributes || jsonb_build_object(
            'k', want, 'boost', lift > 0 AND 0 < ANY (r_boosts[1:want]),
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', in_category, 'price_min', in_price_min, 'price_max', in_price_max))),
        ARRAY(SELECT r_tenants[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r),
        ARRAY(SELECT r_products[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r),
        ARRAY(SELECT r_images[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r));
    RETURN QUERY SELECT r_images[u.p], r_products[u.p], r_distances[u.p]
        FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r;
END
$function$;
"""

SIMILAR_SOURCE = r"""CREATE OR REPLACE FUNCTION imgsearch._similar_source(p_image_id bigint, p_tenant text)
 RETURNS halfvec
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    source halfvec;
    model smallint := imgsearch._image_model_id();
BEGIN
    -- the model read first: a function called in a query Citus sends to the shards can't read the cluster
    SELECT e.embedding INTO source FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.image_id = p_image_id AND (p_tenant IS NULL OR e.tenant = p_tenant);
    IF source IS NULL THEN
        RAISE EXCEPTION 'no embedded image with id %', p_image_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN source;
END
$function$;
"""

PRODUCT_SOURCE = r"""CREATE OR REPLACE FUNCTION imgsearch._product_source(p_tenant text, p_product_id text, OUT source halfvec, OUT pk bigint)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    model smallint := imgsearch._image_model_id();  -- read first: see _similar_source
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'search_similar_product needs a tenant: product ids name products within a tenant'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.id INTO pk FROM imgsearch.products p
        WHERE p.tenant = p_tenant AND p.product_id = p_product_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % has no product %', quote_literal(p_tenant), quote_literal(p_product_id)
            USING ERRCODE = 'no_data_found';
    END IF;
    -- the unit mean of the product's images, as the library computes it
    SELECT l2_normalize(avg(l2_normalize(e.embedding::vector)))::halfvec INTO source
        FROM imgsearch.embeddings e
        WHERE e.model_id = model AND e.tenant = p_tenant AND e.product_pk = pk;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$function$;
"""

PREVIOUS_SEARCH = r"""CREATE OR REPLACE FUNCTION imgsearch._search(query halfvec, k integer, tenant text, category text, price_min numeric, price_max numeric, exclude bigint, exclude_product bigint)
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
    SELECT m.id, m.dim INTO active FROM imgsearch.models m WHERE m.active;
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
"""

PREVIOUS_ANSWERED = r"""CREATE OR REPLACE FUNCTION imgsearch._answered(source halfvec, want integer, in_tenant text, in_category text, in_price_min numeric, in_price_max numeric, exclude bigint, exclude_product bigint, user_query text, attributes jsonb)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    shop text := imgsearch._shop(in_tenant);
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(user_query);
    r_images bigint[];
    r_products text[];
    r_distances double precision[];
    r_tenants text[];
    r_boosts double precision[];
    places int[];
BEGIN
    IF want IS NULL OR want < 1 OR want > 1000 THEN
        RAISE EXCEPTION 'k must be from 1 to 1000, got %', coalesce(want::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    SELECT array_agg(s.image_id ORDER BY s.n), array_agg(s.product_id ORDER BY s.n),
           array_agg(s.distance ORDER BY s.n)
    INTO r_images, r_products, r_distances
    FROM imgsearch._search(source, least(1000, want + lift), shop, in_category, in_price_min, in_price_max,
                           exclude, exclude_product) WITH ORDINALITY AS s(image_id, product_id, distance, n);
    -- (an inner join: Citus sends it to the shards with the ids; an outer one reads every image)
    r_tenants := ARRAY(SELECT f.tenant FROM generate_series(1, coalesce(cardinality(r_images), 0)) AS g(n)
                       LEFT JOIN (SELECT h.n, i.tenant FROM unnest(r_images) WITH ORDINALITY AS h(id, n)
                                  JOIN imgsearch.images i ON i.id = h.id
                                  WHERE shop IS NULL OR i.tenant = shop) AS f ON f.n = g.n
                       ORDER BY g.n);
    IF lift > 0 THEN
        SELECT coalesce(array_agg(o.n ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}'),
               coalesce(array_agg(o.boost ORDER BY o.n - lift * o.boost, o.boost DESC, o.n), '{}')
        INTO places, r_boosts
        FROM (WITH learned AS (  -- the candidates' boosts (read first: an outer join would read them all)
                  SELECT b.tenant, b.product_id, b.query_norm, b.boost FROM imgsearch.boosts b
                  WHERE b.tenant = ANY (r_tenants) AND (shop IS NULL OR b.tenant = shop)
                    AND b.product_id = ANY (r_products) AND b.query_norm IN (norm, '')
              )
              SELECT h.n::int AS n, coalesce(bq.boost, weight * bp.boost, 0)::double precision AS boost
              FROM unnest(r_tenants, r_products) WITH ORDINALITY AS h(tenant, product_id, n)
              LEFT JOIN learned bq ON bq.tenant = h.tenant AND bq.query_norm = norm AND bq.product_id = h.product_id
              LEFT JOIN learned bp ON bp.tenant = h.tenant AND bp.query_norm = '' AND bp.product_id = h.product_id
             ) AS o;
    ELSE
        places := ARRAY(SELECT generate_series(1, coalesce(cardinality(r_images), 0)));
        r_boosts := array_fill(0::double precision, ARRAY[coalesce(cardinality(r_images), 0)]);
    END IF;
    places := places[1:want];
    PERFORM imgsearch._record_search(
        in_tenant, user_query,
        attributes || jsonb_build_object(
            'k', want, 'boost', lift > 0 AND 0 < ANY (r_boosts[1:want]),
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', in_category, 'price_min', in_price_min, 'price_max', in_price_max))),
        ARRAY(SELECT r_tenants[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r),
        ARRAY(SELECT r_products[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r),
        ARRAY(SELECT r_images[u.p] FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r));
    RETURN QUERY SELECT r_images[u.p], r_products[u.p], r_distances[u.p]
        FROM unnest(places) WITH ORDINALITY AS u(p, r) ORDER BY u.r;
END
$function$;
"""

PREVIOUS_SIMILAR_SOURCE = r"""CREATE OR REPLACE FUNCTION imgsearch._similar_source(p_image_id bigint, p_tenant text)
 RETURNS halfvec
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    source halfvec;
BEGIN
    SELECT e.embedding INTO source FROM imgsearch.embeddings e JOIN imgsearch.models m ON m.id = e.model_id
        WHERE m.active AND e.image_id = p_image_id AND (p_tenant IS NULL OR e.tenant = p_tenant);
    IF source IS NULL THEN
        RAISE EXCEPTION 'no embedded image with id %', p_image_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN source;
END
$function$;
"""

PREVIOUS_PRODUCT_SOURCE = r"""CREATE OR REPLACE FUNCTION imgsearch._product_source(p_tenant text, p_product_id text, OUT source halfvec, OUT pk bigint)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'search_similar_product needs a tenant: product ids name products within a tenant'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.id INTO pk FROM imgsearch.products p
        WHERE p.tenant = p_tenant AND p.product_id = p_product_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % has no product %', quote_literal(p_tenant), quote_literal(p_product_id)
            USING ERRCODE = 'no_data_found';
    END IF;
    -- the unit mean of the product's images, as the library computes it
    SELECT l2_normalize(avg(l2_normalize(e.embedding::vector)))::halfvec INTO source
        FROM imgsearch.embeddings e JOIN imgsearch.models m ON m.id = e.model_id
        WHERE m.active AND e.tenant = p_tenant AND e.product_pk = pk;
    IF source IS NULL THEN
        RAISE EXCEPTION 'product % of tenant % has no embedded image yet',
            quote_literal(p_product_id), quote_literal(p_tenant) USING ERRCODE = 'no_data_found';
    END IF;
END
$function$;
"""


def upgrade() -> None:
    conn = op.get_bind()
    for text in (IMAGE_MODEL_ID, SEARCH_FOR_IMAGES, SEARCH, ANSWERED, SIMILAR_SOURCE, PRODUCT_SOURCE):
        definitions.run(conn, text)


def downgrade() -> None:
    conn = op.get_bind()
    for text in (PREVIOUS_SEARCH, PREVIOUS_ANSWERED, PREVIOUS_SIMILAR_SOURCE, PREVIOUS_PRODUCT_SOURCE):
        definitions.run(conn, text)
    op.execute(
        "DROP FUNCTION imgsearch._search(halfvec, integer, text, text, numeric, numeric, bigint, bigint, boolean)"
    )
    op.execute("DROP FUNCTION imgsearch._image_model_id()")
