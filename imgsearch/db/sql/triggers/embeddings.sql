-- the triggers of imgsearch.embeddings: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE TRIGGER embeddings_product_filters BEFORE INSERT OR UPDATE OF product_pk, category, price ON imgsearch.embeddings FOR EACH ROW EXECUTE FUNCTION imgsearch.embedding_takes_product_filters();
