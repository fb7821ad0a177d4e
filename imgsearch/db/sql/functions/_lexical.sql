-- imgsearch._lexical: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._lexical(query text, n integer, tenant text, category text, price_min numeric, price_max numeric)
 RETURNS TABLE(product_pk bigint, rank bigint)
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    shop text := imgsearch._shop(_lexical.tenant);
    m_pks bigint[];
    m_exact boolean[];
    m_ranks real[];
    m_similarities real[];
BEGIN
    -- the matches first: lexical_match reads the products itself (on Citus, a query of the
    -- cluster, which a statement sent to one shard can't run)
    SELECT array_agg(m.product_pk), array_agg(m.exact_match), array_agg(m.doc_rank), array_agg(m.similarity)
    INTO m_pks, m_exact, m_ranks, m_similarities
    FROM imgsearch.lexical_match(query, lower(btrim(query)), btrim(query), NULL, shop) AS m;
    RETURN QUERY
    SELECT p.id, row_number() OVER (ORDER BY m.exact_match DESC, m.doc_rank DESC, m.similarity DESC, p.id)
    FROM unnest(m_pks, m_exact, m_ranks, m_similarities) AS m(product_pk, exact_match, doc_rank, similarity)
    JOIN imgsearch.products p ON p.id = m.product_pk
    WHERE (shop IS NULL OR p.tenant = shop)
      AND (_lexical.category IS NULL OR p.category = _lexical.category)
      AND (_lexical.price_min IS NULL OR p.price_units >= ceil(least(greatest(_lexical.price_min, -1e10), 1e10) * 10000)::bigint)
      AND (_lexical.price_max IS NULL OR p.price_units <= floor(least(greatest(_lexical.price_max, -1e10), 1e10) * 10000)::bigint)
      AND EXISTS (SELECT 1 FROM imgsearch.embeddings e WHERE e.tenant = p.tenant AND e.product_pk = p.id
                  AND e.model_id = (SELECT m2.id FROM imgsearch.models m2 WHERE m2.active))
    ORDER BY 2
    LIMIT n;
END
$function$;
