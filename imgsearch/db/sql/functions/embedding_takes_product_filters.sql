-- imgsearch.embedding_takes_product_filters: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.embedding_takes_product_filters()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
           BEGIN
               SELECT p.category, p.price INTO NEW.category, NEW.price
               FROM imgsearch.products p WHERE p.id = NEW.product_pk;
               RETURN NEW;
           END $function$;
