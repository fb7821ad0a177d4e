-- imgsearch._image_counts_follow: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._image_counts_follow()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- the images a statement added, removed or moved between states, as signed counts per
    -- (tenant, state) appended to imgsearch.image_counts; an update that moves none appends nothing
    IF TG_OP = 'INSERT' THEN
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT a.tenant, a.state, count(*) FROM added a GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT r.tenant, r.state, -count(*) FROM removed r GROUP BY 1, 2;
    ELSE
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT m.tenant, m.state, sum(m.n)
        FROM (SELECT a.tenant, a.state, 1 AS n FROM added a
              UNION ALL SELECT r.tenant, r.state, -1 FROM removed r) AS m
        GROUP BY 1, 2 HAVING sum(m.n) <> 0;
    END IF;
    RETURN NULL;
END
$function$;
