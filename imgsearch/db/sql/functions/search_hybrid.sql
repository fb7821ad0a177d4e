-- imgsearch.search_hybrid: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.search_hybrid(query text, k integer DEFAULT 10, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric, rrf_k double precision DEFAULT 60)
 RETURNS TABLE(image_id bigint, product_id text, title text, brand text, relevance double precision, semantic_rank integer, lexical_rank integer, distance double precision)
 LANGUAGE plpgsql
AS $function$
DECLARE
    q record;
    shop text := imgsearch._shop(search_hybrid.tenant);
    n int;
    lift int;
    weight double precision;
    norm text := imgsearch.normalized_query(query);
    s_images bigint[];
    s_products text[];
    s_distances double precision[];
    l_products bigint[];
    l_ranks bigint[];
    r_images bigint[];
    r_products text[];
    r_titles text[];
    r_brands text[];
    r_relevance double precision[];
    r_semantic int[];
    r_lexical int[];
    r_distances double precision[];
    r_tenants text[];
    r_boosts double precision[];
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
    SELECT array_agg(s.image_id ORDER BY s.ord), array_agg(s.product_id ORDER BY s.ord),
           array_agg(s.distance ORDER BY s.ord)
    INTO s_images, s_products, s_distances
    FROM imgsearch._search(l2_normalize(q.embedding)::halfvec, least(1000, 4 * n), shop, search_hybrid.category,
                           price_min, price_max, NULL) WITH ORDINALITY AS s(image_id, product_id, distance, ord);
    SELECT array_agg(l.product_pk ORDER BY l.rank), array_agg(l.rank ORDER BY l.rank) INTO l_products, l_ranks
    FROM imgsearch._lexical(query, n, shop, search_hybrid.category, price_min, price_max) AS l;
    WITH images AS (
        SELECT s.image_id, s.product_id, s.distance, row_number() OVER (ORDER BY s.distance) AS place
        FROM unnest(s_images, s_products, s_distances) AS s(image_id, product_id, distance)
    ), semantic AS (
        SELECT b.product_pk, b.image_id, row_number() OVER (ORDER BY b.place) AS rank FROM (
            SELECT DISTINCT ON (p.id) p.id AS product_pk, i.image_id, i.place
            FROM images i JOIN imgsearch.embeddings e ON e.image_id = i.image_id
                AND (shop IS NULL OR e.tenant = shop)
            JOIN imgsearch.products p ON p.id = e.product_pk AND p.tenant = e.tenant
                AND p.product_id = i.product_id
            ORDER BY p.id, i.place
        ) AS b ORDER BY b.place LIMIT n
    ), lexical AS (
        SELECT l.product_pk, l.rank FROM unnest(l_products, l_ranks) AS l(product_pk, rank)
    ), fused AS (
        SELECT coalesce(s.product_pk, l.product_pk) AS product_pk, s.image_id AS semantic_image,
               s.rank AS semantic_rank, l.rank AS lexical_rank,
               coalesce(1 / (rrf_k + s.rank), 0) + coalesce(1 / (rrf_k + l.rank), 0) AS relevance
        FROM semantic s FULL JOIN lexical l ON l.product_pk = s.product_pk
    ), placed AS (
        SELECT f.*, p.tenant, p.product_id, p.title, p.brand,
               row_number() OVER (ORDER BY f.relevance DESC, f.product_pk) AS place
        FROM fused f JOIN imgsearch.products p ON p.id = f.product_pk AND (shop IS NULL OR p.tenant = shop)
    ), learned AS (  -- the candidates' boosts (an outer join to boosts would read them all)
        SELECT b.tenant, b.product_id, b.query_norm, b.boost
        FROM placed pl JOIN imgsearch.boosts b ON b.tenant = pl.tenant AND b.product_id = pl.product_id
        WHERE lift > 0 AND pl.place <= k + lift AND (shop IS NULL OR b.tenant = shop)
          AND b.query_norm IN (norm, '')
    ), top AS (
        SELECT pl.*, o.boost, row_number() OVER (ORDER BY pl.place - lift * o.boost, o.boost DESC, pl.place) AS r
        FROM placed pl
        LEFT JOIN learned bq ON bq.tenant = pl.tenant AND bq.query_norm = norm AND bq.product_id = pl.product_id
        LEFT JOIN learned bp ON bp.tenant = pl.tenant AND bp.query_norm = '' AND bp.product_id = pl.product_id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN lift > 0 THEN coalesce(bq.boost, weight * bp.boost, 0)::double precision
                        ELSE 0 END AS boost) AS o
        WHERE pl.place <= k + lift
        ORDER BY pl.place - lift * o.boost, o.boost DESC, pl.place LIMIT k
    ), best AS (  -- each product's image: the semantic side's, else its nearest (DISTINCT ON: Citus
                  -- takes no LIMIT in a lateral subquery over rows it gathered)
        SELECT DISTINCT ON (t.product_pk) t.product_pk, e.image_id,
               (e.embedding <=> q.embedding::halfvec)::double precision AS distance
        FROM top t JOIN imgsearch.embeddings e ON e.tenant = t.tenant AND e.product_pk = t.product_pk
             AND (shop IS NULL OR e.tenant = shop)
        WHERE e.model_id = (SELECT m.id FROM imgsearch.models m WHERE m.active)
        ORDER BY t.product_pk, (e.image_id = t.semantic_image) DESC NULLS LAST, 3, e.image_id
    )
    SELECT array_agg(best.image_id ORDER BY t.r), array_agg(t.product_id ORDER BY t.r),
           array_agg(t.title ORDER BY t.r), array_agg(t.brand ORDER BY t.r), array_agg(t.relevance ORDER BY t.r),
           array_agg(t.semantic_rank::int ORDER BY t.r), array_agg(t.lexical_rank::int ORDER BY t.r),
           array_agg(best.distance ORDER BY t.r), array_agg(t.tenant ORDER BY t.r), array_agg(t.boost ORDER BY t.r)
    INTO r_images, r_products, r_titles, r_brands, r_relevance, r_semantic, r_lexical, r_distances, r_tenants,
         r_boosts
    FROM top t JOIN best ON best.product_pk = t.product_pk;
    PERFORM imgsearch._record_search(
        search_hybrid.tenant, query,
        jsonb_build_object(
            'kind', 'text', 'mode', 'hybrid', 'k', k, 'boost', lift > 0 AND 0 < ANY (r_boosts),
            'filters', jsonb_strip_nulls(jsonb_build_object(
                'category', search_hybrid.category, 'price_min', price_min, 'price_max', price_max))),
        coalesce(r_tenants, '{}'), coalesce(r_products, '{}'), coalesce(r_images, '{}'));
    RETURN QUERY SELECT * FROM unnest(r_images, r_products, r_titles, r_brands, r_relevance, r_semantic,
                                      r_lexical, r_distances);
END
$function$;
