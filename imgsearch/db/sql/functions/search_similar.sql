-- imgsearch.search_similar: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.search_similar(image_id bigint, k integer DEFAULT 10, tenant text DEFAULT NULL::text, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE sql
BEGIN ATOMIC
 SELECT s.image_id,
     s.product_id,
     s.distance
    FROM imgsearch._answered(imgsearch._similar_source(search_similar.image_id, search_similar.tenant), search_similar.k, search_similar.tenant, search_similar.category, search_similar.price_min, search_similar.price_max, search_similar.image_id, NULL::bigint, NULL::text, jsonb_build_object('kind', 'similar_to', 'mode', 'semantic', 'similar_to', search_similar.image_id)) s(image_id, product_id, distance);
END;
