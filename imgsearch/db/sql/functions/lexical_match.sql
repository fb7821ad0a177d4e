-- imgsearch.lexical_match: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.lexical_match(query text, plain text, exact text, excluded text)
 RETURNS TABLE(product_pk bigint, exact_match boolean, doc_rank real, similarity real)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public', 'pg_temp'
AS $function$
DECLARE
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());
    everyone boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
        OR pg_has_role(session_user, 'imgsearch_admin', 'MEMBER')
        OR pg_has_role(session_user, 'imgsearch_worker', 'MEMBER');
    tsq tsquery := websearch_to_tsquery(imgsearch.text_search_config(), coalesce(query, ''));
    nq tsquery := CASE WHEN excluded IS NULL THEN NULL
                       ELSE websearch_to_tsquery(imgsearch.text_search_config(), excluded) END;
BEGIN
    IF shop IS NULL AND NOT coalesce(everyone, false) THEN
        RETURN;
    END IF;
    RETURN QUERY  -- the words and the exact id
        SELECT p.id, p.product_id = exact,
               CASE WHEN p.search_doc @@ tsq THEN ts_rank_cd(p.search_doc, tsq, 32) ELSE 0 END::real,
               word_similarity(plain, p.lexical_text)
        FROM imgsearch.products p
        WHERE (p.product_id = exact OR p.search_doc @@ tsq)
          AND (nq IS NULL OR NOT p.search_doc @@ nq)
          AND (shop IS NULL OR p.tenant = shop);
    IF NOT FOUND THEN  -- nothing: the near spellings of the title, brand or id
        RETURN QUERY
            SELECT p.id, false, 0::real, word_similarity(plain, p.lexical_text)
            FROM imgsearch.products p
            WHERE p.lexical_text %> plain
              AND (nq IS NULL OR NOT p.search_doc @@ nq)
              AND (shop IS NULL OR p.tenant = shop);
    END IF;
END
$function$;

CREATE OR REPLACE FUNCTION imgsearch.lexical_match(query text, plain text, exact text, excluded text, within text)
 RETURNS TABLE(product_pk bigint, exact_match boolean, doc_rank real, similarity real)
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public', 'pg_temp'
AS $function$
DECLARE
    everyone boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
        OR pg_has_role(session_user, 'imgsearch_admin', 'MEMBER')
        OR pg_has_role(session_user, 'imgsearch_worker', 'MEMBER');
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant(),
                          CASE WHEN everyone THEN within END);
    tsq tsquery := websearch_to_tsquery(imgsearch.text_search_config(), coalesce(query, ''));
    nq tsquery := CASE WHEN excluded IS NULL THEN NULL
                       ELSE websearch_to_tsquery(imgsearch.text_search_config(), excluded) END;
BEGIN
    IF shop IS NULL AND NOT coalesce(everyone, false) THEN
        RETURN;
    END IF;
    RETURN QUERY  -- the words and the exact id
        SELECT p.id, p.product_id = exact,
               CASE WHEN p.search_doc @@ tsq THEN ts_rank_cd(p.search_doc, tsq, 32) ELSE 0 END::real,
               word_similarity(plain, p.lexical_text)
        FROM imgsearch.products p
        WHERE (p.product_id = exact OR p.search_doc @@ tsq)
          AND (nq IS NULL OR NOT p.search_doc @@ nq)
          AND (shop IS NULL OR p.tenant = shop);
    IF NOT FOUND THEN  -- nothing: the near spellings of the title, brand or id
        RETURN QUERY
            SELECT p.id, false, 0::real, word_similarity(plain, p.lexical_text)
            FROM imgsearch.products p
            WHERE p.lexical_text %> plain
              AND (nq IS NULL OR NOT p.search_doc @@ nq)
              AND (shop IS NULL OR p.tenant = shop);
    END IF;
END
$function$;
