-- imgsearch.search_vector: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.search_vector(query vector, k integer DEFAULT 10, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE sql
BEGIN ATOMIC
 SELECT _answered.image_id,
     _answered.product_id,
     _answered.distance
    FROM imgsearch._answered((l2_normalize(search_vector.query))::halfvec, search_vector.k, search_vector.tenant, search_vector.category, search_vector.price_min, search_vector.price_max, NULL::bigint, NULL::bigint, NULL::text, '{"kind": "vector", "mode": "semantic"}'::jsonb) _answered(image_id, product_id, distance);
END;
