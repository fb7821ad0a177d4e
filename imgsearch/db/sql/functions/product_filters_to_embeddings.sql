-- imgsearch.product_filters_to_embeddings: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.product_filters_to_embeddings()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
           BEGIN
               UPDATE imgsearch.embeddings e SET category = NEW.category, price = NEW.price
               WHERE e.product_pk = NEW.id;
               RETURN NULL;
           END $function$;
