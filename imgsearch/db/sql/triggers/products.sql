-- the triggers of imgsearch.products: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE TRIGGER products_facets_moved AFTER UPDATE ON imgsearch.products REFERENCING OLD TABLE AS old_products NEW TABLE AS new_products FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._facets_follow_products();

CREATE OR REPLACE TRIGGER products_filters_rechecked AFTER UPDATE ON imgsearch.products REFERENCING OLD TABLE AS old_products NEW TABLE AS new_products FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._filters_recheck_products();

CREATE OR REPLACE TRIGGER products_filters_to_embeddings AFTER UPDATE OF category, price ON imgsearch.products FOR EACH ROW WHEN (old.category IS DISTINCT FROM new.category OR old.price IS DISTINCT FROM new.price) EXECUTE FUNCTION imgsearch.product_filters_to_embeddings();

CREATE OR REPLACE TRIGGER products_keep_shared_images BEFORE DELETE ON imgsearch.products FOR EACH ROW EXECUTE FUNCTION imgsearch._keep_shared_images();

CREATE OR REPLACE TRIGGER products_webhook_updated AFTER UPDATE ON imgsearch.products FOR EACH ROW WHEN (old.category IS DISTINCT FROM new.category OR old.price IS DISTINCT FROM new.price OR old.currency::text IS DISTINCT FROM new.currency::text OR old.attributes IS DISTINCT FROM new.attributes OR old.title IS DISTINCT FROM new.title OR old.description IS DISTINCT FROM new.description OR old.brand IS DISTINCT FROM new.brand) EXECUTE FUNCTION imgsearch._webhook_row_event('products');
