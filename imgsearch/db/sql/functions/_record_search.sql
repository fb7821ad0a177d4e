-- imgsearch._record_search: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._record_search(tenant text, user_query text, attributes jsonb, tenants text[], product_ids text[], image_ids bigint[])
 RETURNS uuid
 LANGUAGE plpgsql
AS $function$
DECLARE
    id uuid;
    pks bigint[];
    recording text := lower(btrim(coalesce(nullif(current_setting('imgsearch.record_queries', true), ''), 'on')));
BEGIN
    PERFORM set_config('imgsearch.last_query_id', '', false);
    tenant := coalesce(tenant, imgsearch.login_tenant(), imgsearch.current_tenant(), '');
    IF recording IN ('off', 'false', 'no', '0') OR pg_is_in_recovery()
       OR current_setting('transaction_read_only') = 'on' THEN
        RETURN NULL;
    END IF;
    id := uuidv7();
    BEGIN
        -- the hits' product keys first (an inner join, placed by their order: Citus sends it to
        -- the shards with the ids; an outer join would read every product), then a plain INSERT:
        -- Citus routes it to the shop's node (an INSERT ... SELECT goes through COPY, which
        -- row-level security refuses a console login)
        pks := ARRAY(SELECT f.id FROM generate_series(1, cardinality(product_ids)) AS g(n)
                     LEFT JOIN (SELECT h.n, p.id
                                FROM unnest(tenants, product_ids) WITH ORDINALITY AS h(tenant, product_id, n)
                                JOIN imgsearch.products p ON p.tenant = h.tenant AND p.product_id = h.product_id
                                WHERE _record_search.tenant = '' OR p.tenant = _record_search.tenant) AS f
                     ON f.n = g.n ORDER BY g.n);
        INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, user_query, query_norm,
            query_attributes, result_offset, product_ids, image_ids, product_pks)
        VALUES (id, uuid_extract_timestamp(id), tenant, user_query, imgsearch.normalized_query(user_query),
            attributes || '{"via": "sql"}', 0, product_ids, image_ids, pks);
    EXCEPTION WHEN others THEN
        RAISE WARNING 'search not recorded (its events will be refused): %', SQLERRM;
        RETURN NULL;
    END;
    PERFORM set_config('imgsearch.last_query_id', id::text, false);
    RETURN id;
END
$function$;
