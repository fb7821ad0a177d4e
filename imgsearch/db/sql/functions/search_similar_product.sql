-- imgsearch.search_similar_product: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.search_similar_product(tenant text, product_id text, k integer DEFAULT 10, category text DEFAULT NULL::text, price_min numeric DEFAULT NULL::numeric, price_max numeric DEFAULT NULL::numeric)
 RETURNS TABLE(image_id bigint, product_id text, distance double precision)
 LANGUAGE sql
BEGIN ATOMIC
 SELECT s.image_id,
     s.product_id,
     s.distance
    FROM imgsearch._product_source(search_similar_product.tenant, search_similar_product.product_id) src(source, pk),
     LATERAL imgsearch._answered(src.source, search_similar_product.k, search_similar_product.tenant, search_similar_product.category, search_similar_product.price_min, search_similar_product.price_max, NULL::bigint, src.pk, NULL::text, jsonb_build_object('kind', 'similar_to_product', 'mode', 'semantic', 'similar_to_product', search_similar_product.product_id)) s(image_id, product_id, distance);
END;
