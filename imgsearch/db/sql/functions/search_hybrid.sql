-- imgsearch.search_hybrid: the definition a migrated catalog runs (imgsearch/db/definitions.py)

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
