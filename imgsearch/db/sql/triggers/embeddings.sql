-- the triggers of imgsearch.embeddings: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE TRIGGER embeddings_facets_added AFTER INSERT ON imgsearch.embeddings REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_rows();

CREATE OR REPLACE TRIGGER embeddings_facets_moved AFTER UPDATE ON imgsearch.embeddings REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_rows();

CREATE OR REPLACE TRIGGER embeddings_facets_removed AFTER DELETE ON imgsearch.embeddings REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_rows();

CREATE OR REPLACE TRIGGER embeddings_facets_truncated AFTER TRUNCATE ON imgsearch.embeddings FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_truncated();

CREATE OR REPLACE TRIGGER embeddings_filters_rechecked AFTER INSERT ON imgsearch.embeddings REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._filters_recheck_rows();

CREATE OR REPLACE TRIGGER embeddings_product_filters BEFORE UPDATE OF product_pk, category, price ON imgsearch.embeddings FOR EACH ROW EXECUTE FUNCTION imgsearch.embedding_takes_product_filters();

CREATE OR REPLACE TRIGGER embeddings_product_filters_added BEFORE INSERT ON imgsearch.embeddings FOR EACH ROW WHEN (new.category IS NULL AND new.price IS NULL) EXECUTE FUNCTION imgsearch.embedding_takes_product_filters();
