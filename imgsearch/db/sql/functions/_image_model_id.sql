-- imgsearch._image_model_id: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._image_model_id()
 RETURNS smallint
 LANGUAGE sql
 STABLE
BEGIN ATOMIC
 SELECT m.id
    FROM imgsearch.models m
   WHERE (m.serves_images OR m.active)
   ORDER BY m.serves_images DESC
  LIMIT 1;
END;
