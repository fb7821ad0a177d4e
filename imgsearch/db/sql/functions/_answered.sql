-- imgsearch._answered: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._answered(source halfvec, want integer, in_tenant text, in_category text, in_price_min numeric, in_price_max numeric, exclude bigint, exclude_product bigint, user_query text, attributes jsonb)
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
