"""The console's search functions in PL/pgSQL, around the library's statements: the templates
:mod:`imgsearch.search.console` fills (``{name}``: a statement's text, a number of
:mod:`imgsearch.search.plans`, a USING list). Read the functions themselves in
``imgsearch/db/sql/functions/``."""

SEARCH_HEAD = """-- imgsearch._search: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
"""

SEARCH_BODY = r"""AS $function$
-- Written by imgsearch/search/console.py: the statements are the library's
-- (imgsearch/search/statements.py), the numbers its plans' (imgsearch/search/plans.py), the order
-- imgsearch.search.strategy.search_vector's. Edit those, then: python -m imgsearch.search.console --write
DECLARE
    active record;
    images smallint := CASE WHEN for_images THEN imgsearch._image_model_id() END;  -- read first (Citus)
    has_filters boolean := num_nulls(tenant, category, price_min, price_max, exclude, exclude_product) < 6;
{units}    total bigint;
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
    margin text := btrim(coalesce(nullif(current_setting('imgsearch.region_margin', true), ''), '{margin}'));
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
    total_rows constant text := $sql${total}$sql$;
    -- statements.exact_bound: the most rows an exact scan may take
    exact_rows constant text := $sql${bound}$sql$;
    -- statements.hnsw_statement: the matching rows among the ef_search nearest
    one_pass constant text := $sql${one_pass}$sql$;
    -- statements.filtered_statement: the count, the one pass and the exact scan, each run when
    -- the counts before it call for it
    filtered constant text := $sql${filtered}$sql$;
    -- the same without the one pass (2 k above plans.MAX_EF_SEARCH)
    filtered_exact constant text := $sql${filtered_exact}$sql$;
    -- the same with the binary codes' part: a far filter's rows nearest by their codes, re-ranked
    filtered_codes constant text := $sql${filtered_codes}$sql$;
    -- statements.pooled_statement: a relaxed iterative scan's pool, re-sorted exactly
    pooled constant text := $sql${pooled}$sql$;
    -- statements.exact_statement: every matching row's distance
    exact constant text := $sql${exact}$sql$;
BEGIN
    IF k IS NULL OR k < 1 OR k > {max_k} THEN
        RAISE EXCEPTION 'k must be from 1 to {max_k}, got %', k USING ERRCODE = 'invalid_parameter_value';
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
        rows_k := least({max_rows}, greatest({min_rows}, 4 * k));
    END IF;
    IF imgsearch._citus() THEN
        PERFORM imgsearch._begin_distributed();
    ELSE  -- (a coordinator plans each shop's statement on its shard: no codes there, as in the library)
        codes := imgsearch._binary_codes_on(active.id);
    END IF;
    EXECUTE total_rows INTO total;
    min_ef := CASE WHEN total <= {ef_base_rows} THEN {min_ef}
                   ELSE least({max_ef}, ceil({min_ef} * (total / {ef_base_rows}.0) ^ {ef_growth}))::int END;
    LOOP
        strategy := NULL;
        EXECUTE exact_rows INTO bound USING {using};
        -- plans.one_pass_plan (none past {max_ef})
        ef_search := greatest(min_ef, 2 * rows_k);
        PERFORM imgsearch._set_local('hnsw.ef_search', CASE WHEN ef_search <= {max_ef} THEN ef_search ELSE min_ef END::text);
        PERFORM imgsearch._set_local('hnsw.iterative_scan', 'off');

        IF NOT has_filters AND ef_search <= {max_ef} THEN
            EXECUTE format(hits, format(one_pass, active.id, active.dim)) INTO ids, products, distances, boxed
                USING {using};
            IF coalesce(cardinality(ids), 0) >= rows_k THEN
                strategy := 'hnsw';
            END IF;
        ELSIF has_filters THEN
            -- the codes' part where a tenant or a category leads their index (statements.codes_cover)
            EXECUTE format(counted_hits, format(CASE WHEN ef_search > {max_ef} THEN filtered_exact
                                                     WHEN codes AND num_nulls(tenant, category) < 2 THEN filtered_codes
                                                     ELSE filtered END,
                                                active.id, active.dim))
                INTO ids, products, distances, boxed, matching, bound, total, source
                USING {using};
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
            ef_search := least({max_ef}, greatest(min_ef, 2 * rows_k));
            max_scan_tuples := least(greatest({min_scan_tuples}, total), {max_scan_tuples});
            pool := least({max_pool}, greatest({min_pool}, 4 * rows_k));
            PERFORM imgsearch._set_local('hnsw.ef_search', ef_search::text);
            PERFORM imgsearch._set_local('hnsw.iterative_scan', 'relaxed_order');
            PERFORM imgsearch._set_local('hnsw.max_scan_tuples', max_scan_tuples::text);
            PERFORM imgsearch._set_local('hnsw.scan_mem_multiplier', '{scan_mem_multiplier}');
            EXECUTE format(hits, format(pooled, active.id, active.dim)) INTO ids, products, distances, boxed
                USING {using};
            IF coalesce(cardinality(ids), 0) = rows_k THEN
                strategy := format('hnsw_iterative (pool %s, ef_search %s)', pool, ef_search);
            ELSE
                EXECUTE format(hits, format(exact, active.id, active.dim)) INTO ids, products, distances, boxed
                    USING {using};
                strategy := 'exact (the pool came short)';
            END IF;
        END IF;
        EXIT WHEN NOT regioned;
        -- each image (of a product) once, by min(its whole row's distance, its best region's +
        -- the margin), placed once no row beyond those fetched could place it higher
        last := CASE WHEN coalesce(cardinality(ids), 0) = rows_k AND rows_k < {max_rows}
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
        rows_k := least({max_rows}, 4 * rows_k);  -- many rows an image: a wider pool
    END LOOP;
    RAISE DEBUG 'imgsearch._search: %', strategy;
    RETURN QUERY SELECT * FROM unnest(ids[1:k], products[1:k], distances[1:k]);
END
$function$;
"""


UNITS = """    -- a price bound in price_units: within the stored range, rounded inwards (search.filters;
    -- NULL: no bound, and greatest and least pass over a NULL)
    units_min bigint := CASE WHEN price_min IS NOT NULL
                             THEN ceil(least(greatest(price_min, -{limit}), {limit}) * 10000)::bigint END;
    units_max bigint := CASE WHEN price_max IS NOT NULL
                             THEN floor(least(greatest(price_max, -{limit}), {limit}) * 10000)::bigint END;
"""

# lexical_match's rows as the arrays lexical.lexical_ranked and facets.statement read (fetched)
MATCHES_INTO = """SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
    INTO m_pks, m_exact, m_ranks, m_similarities
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;"""

LEXICAL = """-- imgsearch._lexical: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._lexical(query text, n integer, tenant text, category text, price_min numeric, price_max numeric)
 RETURNS TABLE(product_pk bigint, rank bigint)
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Written by imgsearch/search/console.py: the statement is the library's
-- (imgsearch.search.lexical.lexical_ranked). Edit it, then: python -m imgsearch.search.console --write
DECLARE
    shop text := imgsearch._shop(_lexical.tenant);
{units}    exclude bigint;
    exclude_product bigint;
    model_id smallint := (SELECT m.id FROM imgsearch.models m WHERE m.active);
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
    -- the best n products matching the text and the filters: an exact id first, then the
    -- document's rank, then the trigram similarity
    ranked constant text := $sql${ranked}$sql$;
BEGIN
    -- the matches first: lexical_match reads the products itself (on Citus, a query of the
    -- cluster, which a statement sent to one shard can't run)
    {matches}
    RETURN QUERY EXECUTE format(ranked, coalesce(model_id, 0)) USING {using};
END
$function$;
"""

FACETS = """-- imgsearch.facets: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.facets(query text DEFAULT NULL::text, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Written by imgsearch/search/console.py: the statements are the library's
-- (imgsearch.search.facets.statement). Edit it, then: python -m imgsearch.search.console --write
DECLARE
    shop text := imgsearch._shop(facets.tenant);
{units}    exclude bigint;
    exclude_product bigint;
    model_id smallint := (SELECT m.id FROM imgsearch.models m WHERE m.active);
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
    counted record;
    -- the whole match set read once, counted per category, brand, attribute value and price
    every constant text := $sql${every}$sql$;
    -- the same for the products matching the text
    matching constant text := $sql${matching}$sql$;
BEGIN
    IF query IS NOT NULL THEN  -- first: lexical_match reads the products itself
    {matches}
    END IF;
    EXECUTE format(CASE WHEN query IS NULL THEN every ELSE matching END, coalesce(model_id, 0))
        INTO counted USING {using};
    RETURN jsonb_build_object(
        'total', counted.total,
        'total_relation', 'eq',  -- facets read the whole match set: their total is exact
        'category', coalesce((SELECT jsonb_object_agg(c ->> 0, (c ->> 1)::bigint)
                              FROM json_array_elements(counted.category) AS c), '{{}}'),
        'brand', coalesce((SELECT jsonb_object_agg(b ->> 0, (b ->> 1)::bigint)
                           FROM json_array_elements(counted.brand) AS b), '{{}}'),
        'attributes', coalesce((SELECT jsonb_object_agg(a ->> 0, (SELECT jsonb_object_agg(v ->> 0, (v ->> 1)::bigint)
                                                                  FROM json_array_elements(a -> 2) AS v))
                                FROM json_array_elements(counted.attributes) AS a), '{{}}'),
        'price', coalesce((SELECT jsonb_agg(jsonb_build_object('from', (p ->> 0)::numeric, 'to', (p ->> 1)::numeric,
                                                               'count', (p ->> 2)::bigint) ORDER BY (p ->> 0)::numeric)
                           FROM json_array_elements(counted.price) AS p), '[]'));
END
$function$;
"""

HYBRID = """-- imgsearch.search_hybrid: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
{units}    exclude bigint;
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
    r_images bigint[] := '{{}}';
    r_products text[] := '{{}}';
    r_tenants text[] := '{{}}';
    boosted boolean := false;
    -- Reciprocal Rank Fusion of the two sides' products, each with its best image: a shop's,
    -- then every shop's (each product's best row by DISTINCT ON, the boosts joined, as Citus
    -- needs), each with the learned boosts and without
    fused constant text := $sql${fused}$sql$;
    fused_boosted constant text := $sql${fused_boosted}$sql$;
    fused_everywhere constant text := $sql${fused_everywhere}$sql$;
    fused_everywhere_boosted constant text := $sql${fused_everywhere_boosted}$sql$;
BEGIN
    IF k IS NULL OR k < 1 OR k > {max_k} THEN  -- before asking a worker anything
        RAISE EXCEPTION 'k must be from 1 to {max_k}, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rrf_k IS NULL OR NOT rrf_k > 0 OR rrf_k = 'Infinity' THEN
        RAISE EXCEPTION 'rrf_k must be a number above 0, got %', coalesce(rrf_k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    lift := imgsearch._boost_lift(shop);
    weight := imgsearch._boost_product_weight();
    -- each side's products (imgsearch.search.hybrid.candidates)
    n := least({max_candidates}, greatest({min_candidates}, 2 * k, k + lift));
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
    {matches}
    FOR hit IN EXECUTE format(CASE WHEN shop IS NULL AND lift > 0 THEN fused_everywhere_boosted
                                   WHEN shop IS NULL THEN fused_everywhere
                                   WHEN lift > 0 THEN fused_boosted ELSE fused END, coalesce(model_id, 0))
        USING {using}
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
