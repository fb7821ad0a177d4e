-- imgsearch.maintain_feedback_log: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch.maintain_feedback_log(retention_days integer, days_ahead integer DEFAULT 7)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
DECLARE
    logs CONSTANT text[] := ARRAY['search_queries', 'search_events'];
    columns CONSTANT text[] := ARRAY['searched_at', 'occurred_at'];
    cutoff timestamptz;
    day date;
    created int := 0;
    dropped int := 0;
    deleted bigint := 0;
    n bigint;
    busy boolean;
    part record;
BEGIN
    IF retention_days IS NULL OR retention_days < 1 THEN
        RAISE EXCEPTION 'retention_days must be at least 1, got %', coalesce(retention_days::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF days_ahead IS NULL OR days_ahead < 0 OR days_ahead > 366 THEN
        RAISE EXCEPTION 'days_ahead must be from 0 to 366, got %', coalesce(days_ahead::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - make_interval(days => retention_days);
    FOR i IN 1 .. 2 LOOP
        IF to_regclass(format('imgsearch_log.%I', logs[i] || '_default')) IS NULL THEN
            EXECUTE format('CREATE TABLE imgsearch_log.%I PARTITION OF imgsearch.%I DEFAULT',
                           logs[i] || '_default', logs[i]);
        END IF;
        FOR day IN SELECT d::date FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                                       (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                                       interval '1 day') AS d LOOP
            CONTINUE WHEN to_regclass(format('imgsearch_log.%I', logs[i] || '_' || to_char(day, 'YYYYMMDD')))
                IS NOT NULL;
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM imgsearch_log.%I WHERE %I >= %L AND %I < %L)',
                           logs[i] || '_default', columns[i], day::timestamp AT TIME ZONE 'UTC',
                           columns[i], (day + 1)::timestamp AT TIME ZONE 'UTC') INTO busy;
            CONTINUE WHEN busy;
            EXECUTE format('CREATE TABLE imgsearch_log.%I PARTITION OF imgsearch.%I FOR VALUES FROM (%L) TO (%L)',
                           logs[i] || '_' || to_char(day, 'YYYYMMDD'), logs[i],
                           day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END LOOP;
        FOR part IN
            SELECT c.relname FROM pg_inherits h
            JOIN pg_class c ON c.oid = h.inhrelid
            JOIN pg_namespace s ON s.oid = c.relnamespace
            WHERE h.inhparent = format('imgsearch.%I', logs[i])::regclass AND s.nspname = 'imgsearch_log'
              AND c.relname ~ ('^' || logs[i] || '_[0-9]{8}$')
              AND to_date(right(c.relname, 8), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC' + interval '1 day' <= cutoff
        LOOP
            EXECUTE format('DROP TABLE imgsearch_log.%I', part.relname);
            dropped := dropped + 1;
        END LOOP;
        EXECUTE format('DELETE FROM imgsearch_log.%I WHERE %I < %L', logs[i] || '_default', columns[i], cutoff);
        GET DIAGNOSTICS n = ROW_COUNT;
        deleted := deleted + n;
    END LOOP;
    DELETE FROM imgsearch.event_ids WHERE occurred_at < cutoff;
    RETURN jsonb_build_object('created', created, 'dropped', dropped, 'deleted', deleted);
END
$function$;
