-- imgsearch.compact_facet_counts: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.compact_facet_counts(tenant text, model_id smallint)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- a shop's counts (its own and its categories') folded into one row per value: the rows it
    -- deletes are those it sums (a count a concurrent writer appends meanwhile stays beside them)
    WITH gone AS (
        DELETE FROM imgsearch.facet_counts c
        WHERE c.tenant = compact_facet_counts.tenant AND c.model_id = compact_facet_counts.model_id
        RETURNING c.category, c.facet, c.key, c.value, c.n
    ), folded AS (
        INSERT INTO imgsearch.facet_counts (tenant, model_id, category, facet, key, value, n)
        SELECT compact_facet_counts.tenant, compact_facet_counts.model_id, g.category, g.facet, g.key, g.value,
               sum(g.n)
        FROM gone g GROUP BY g.category, g.facet, g.key, g.value HAVING sum(g.n) <> 0
        RETURNING 1
    )
    SELECT count(*) FROM folded
$function$;
