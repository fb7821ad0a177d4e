-- the triggers of imgsearch.images: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE TRIGGER images_link_new AFTER INSERT ON imgsearch.images REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION imgsearch._link_new_images();
