-- imgsearch._shop_products: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._shop_products(wanted jsonb, most integer)
 RETURNS bigint[]
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET plan_cache_mode TO 'force_custom_plan'
AS $function$
-- The ids of the caller's shop's products whose attributes contain `wanted`, when at most `most`
-- do; NULL when more do, or when the caller has no shop (migration 0042).
--
-- A shop's search runs under row-level security, where jsonb's @> (not LEAKPROOF) can't use
-- products_attributes_idx. This function reads the index as the owner, for the shop the policies
-- give the caller (a console login's own, whatever imgsearch.tenant says; else imgsearch.tenant),
-- and the search keeps the rows of these products (imgsearch/search/shop_filters.py).
DECLARE
    shop text := coalesce(imgsearch.login_tenant(), imgsearch.current_tenant());
    found bigint[];
BEGIN
    IF shop IS NULL OR wanted IS NULL OR most IS NULL OR most < 0 THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(m.id) INTO found
      FROM (SELECT p.id
              FROM imgsearch.products p
             WHERE p.tenant = shop AND p.attributes @> wanted
             LIMIT most + 1) AS m;
    RETURN CASE WHEN coalesce(cardinality(found), 0) <= most THEN coalesce(found, '{}') END;
END
$function$;
