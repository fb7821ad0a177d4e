-- imgsearch.compact_image_counts: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.compact_image_counts(tenant text)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- a shop's counts (NULL: every shop's) folded into one row per state: the rows it deletes
    -- are those it sums (a count a concurrent writer appends meanwhile stays beside them)
    WITH gone AS (
        DELETE FROM imgsearch.image_counts c
        WHERE c.tenant = compact_image_counts.tenant OR compact_image_counts.tenant IS NULL
        RETURNING c.tenant, c.state, c.n
    ), folded AS (
        INSERT INTO imgsearch.image_counts (tenant, state, n)
        SELECT g.tenant, g.state, sum(g.n) FROM gone g GROUP BY 1, 2 HAVING sum(g.n) <> 0
        RETURNING 1
    )
    SELECT count(*) FROM folded
$function$;
