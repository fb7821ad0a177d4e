-- imgsearch._notify_image_state: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._notify_image_state()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- the id alone: a waiter reads the state through its own tenant's scope
    PERFORM pg_notify('imgsearch_image_state', NEW.id::text);
    RETURN NULL;
END
$function$;
