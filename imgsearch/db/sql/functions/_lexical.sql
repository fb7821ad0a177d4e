-- imgsearch._lexical: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._lexical(query text, n integer, tenant text, category text, price_min numeric, price_max numeric)
 RETURNS TABLE(product_pk bigint, rank bigint)
 LANGUAGE plpgsql
 STABLE
AS $function$
-- Written by imgsearch/search/console.py: the statement is the library's
-- (imgsearch.search.lexical.lexical_ranked). Edit it, then: python -m imgsearch.search.console --write
DECLARE
    shop text := imgsearch._shop(_lexical.tenant);
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
    -- the best n products matching the text and the filters: an exact id first, then the
    -- document's rank, then the trigram similarity
    ranked constant text := $sql$SELECT imgsearch.products.id AS product_pk, row_number() OVER (ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk) AS rank
FROM (SELECT lexical_match.product_pk AS product_pk, lexical_match.exact_match AS exact_match, lexical_match.doc_rank AS doc_rank, lexical_match.similarity AS similarity
FROM unnest($8, $9, $10, $11) AS lexical_match(product_pk, exact_match, doc_rank, similarity) ORDER BY lexical_match.exact_match DESC, lexical_match.doc_rank DESC, lexical_match.similarity DESC, lexical_match.product_pk) AS ranked_matches JOIN imgsearch.products ON imgsearch.products.id = ranked_matches.product_pk
WHERE ($2 IS NULL OR imgsearch.products.tenant = $2) AND ($3 IS NULL OR imgsearch.products.category = $3) AND ($4 IS NULL OR imgsearch.products.price_units >= $4) AND ($5 IS NULL OR imgsearch.products.price_units <= $5) AND (EXISTS (SELECT 1 AS anon_1
FROM imgsearch.embeddings
WHERE imgsearch.products.id = imgsearch.embeddings.product_pk AND imgsearch.products.tenant = imgsearch.embeddings.tenant AND ($2 IS NULL OR imgsearch.products.tenant = $2) AND imgsearch.embeddings.model_id = %1$s AND ($6 IS NULL OR imgsearch.embeddings.image_id != $6) AND ($7 IS NULL OR imgsearch.embeddings.product_pk != $7))) ORDER BY ranked_matches.exact_match DESC, ranked_matches.doc_rank DESC, ranked_matches.similarity DESC, ranked_matches.product_pk
 LIMIT $1$sql$;
BEGIN
    -- the matches first: lexical_match reads the products itself (on Citus, a query of the
    -- cluster, which a statement sent to one shard can't run)
    SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
    INTO m_pks, m_exact, m_ranks, m_similarities
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;
    RETURN QUERY EXECUTE format(ranked, coalesce(model_id, 0)) USING n, shop, category, units_min, units_max, exclude, exclude_product, m_pks, m_exact, m_ranks, m_similarities;
END
$function$;
