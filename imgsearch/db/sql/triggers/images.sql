-- the triggers of imgsearch.images: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE TRIGGER images_counts_added AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_follow();

CREATE OR REPLACE TRIGGER images_counts_moved AFTER UPDATE ON imgsearch.images REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_follow();

CREATE OR REPLACE TRIGGER images_counts_removed AFTER DELETE ON imgsearch.images REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_follow();

CREATE OR REPLACE TRIGGER images_counts_truncated AFTER TRUNCATE ON imgsearch.images FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._image_counts_truncated();

CREATE OR REPLACE TRIGGER images_link_new AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._link_new_images();

CREATE OR REPLACE TRIGGER images_state_notify AFTER UPDATE OF state ON imgsearch.images FOR EACH ROW WHEN ((new.state = ANY (ARRAY['ready'::text, 'failed'::text])) AND old.state IS DISTINCT FROM new.state) EXECUTE FUNCTION imgsearch._notify_image_state();

CREATE OR REPLACE TRIGGER images_webhook_deleted AFTER DELETE ON imgsearch.images FOR EACH ROW EXECUTE FUNCTION imgsearch._webhook_row_event('images');

CREATE OR REPLACE TRIGGER images_webhook_inserted AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._webhook_images_added();

CREATE OR REPLACE TRIGGER images_webhook_state AFTER UPDATE OF state ON imgsearch.images FOR EACH ROW WHEN ((new.state = ANY (ARRAY['ready'::text, 'failed'::text])) AND old.state IS DISTINCT FROM new.state) EXECUTE FUNCTION imgsearch._webhook_row_event('images');
