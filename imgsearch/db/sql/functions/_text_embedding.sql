-- imgsearch._text_embedding: the definition a migrated catalog runs (imgsearch/db/definitions.py)

CREATE OR REPLACE FUNCTION imgsearch._text_embedding(query text, OUT embedding vector, OUT logit_scale double precision, OUT logit_bias double precision)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'public', 'pg_temp'
AS $function$
DECLARE
    model smallint;
    hex text;
    answer record;
    connections text[];
    timeout numeric;
    started timestamptz := clock_timestamp();
    asked timestamptz;
    pause double precision := 0.001;
    conninfo text;
    listening bigint;
    -- dblink's schema, read here: an administrator may have created it anywhere (a managed service)
    dblink text := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'dblink');
    setup constant text := ' (docs/operations.md, "Managed PostgreSQL")';
BEGIN
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'a text query must be a non-empty string, got %', quote_nullable(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(query) > 2000 THEN
        RAISE EXCEPTION 'text query is % characters; the limit is 2000', length(query)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.id INTO model FROM imgsearch.models m WHERE m.active;
    IF model IS NULL THEN
        RAISE EXCEPTION 'the catalog has no active model' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF (SELECT m.external FROM imgsearch.models m WHERE m.id = model) THEN
        RAISE EXCEPTION 'the catalog''s model % embeds no text here: its vectors come from elsewhere '
            '(imgsearch model add); search with imgsearch.search_vector and a query vector made by that model',
            (SELECT m.name FROM imgsearch.models m WHERE m.id = model)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT t.embedding, t.logit_scale, t.logit_bias INTO embedding, logit_scale, logit_bias
        FROM imgsearch.text_embeddings t WHERE t.model_id = model AND t.text_hash = imgsearch._text_hash(query);
    IF embedding IS NOT NULL THEN
        RETURN;
    END IF;
    BEGIN
        timeout := coalesce(nullif(current_setting('imgsearch.text_timeout', true), ''), '5')::numeric;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'imgsearch.text_timeout must be a number of seconds, got %',
            current_setting('imgsearch.text_timeout', true) USING ERRCODE = 'invalid_parameter_value';
    END;
    IF dblink IS NULL THEN
        RAISE EXCEPTION 'text search from SQL needs the dblink extension, which this database lacks: an '
            'administrator runs CREATE EXTENSION dblink, then run `imgsearch db console-setup`%', setup
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE format('SELECT %I.dblink_get_connections()', dblink) INTO connections;
    IF NOT ('imgsearch_text' = ANY (coalesce(connections, '{}'))) THEN
        -- the server's host and port, the user mapping's login, and this database: a copy of it
        -- (CREATE DATABASE ... TEMPLATE, a restore under another name) asks itself, not its origin
        SELECT string_agg(o.option_name || '=' || imgsearch._conninfo_quote(o.option_value), ' ') INTO conninfo
            FROM (
                SELECT (pg_options_to_table(s.srvoptions)).* FROM pg_foreign_server s
                    WHERE s.srvname = 'imgsearch_loopback'
                UNION ALL
                SELECT (pg_options_to_table(u.umoptions)).* FROM pg_user_mappings u
                    WHERE u.srvname = 'imgsearch_loopback' AND u.usename = current_user
            ) AS o WHERE o.option_name IN ('host', 'port', 'user', 'password');
        IF conninfo IS NULL THEN
            RAISE EXCEPTION 'text search from SQL needs its loopback connection, which this database lacks: '
                'an administrator runs GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO %, then run '
                '`imgsearch db console-setup`%', quote_ident(current_user), setup
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        BEGIN
            EXECUTE format('SELECT %I.dblink_connect(%L, %L)', dblink, 'imgsearch_text', conninfo || ' dbname='
                || imgsearch._conninfo_quote(current_database()) || ' application_name=imgsearch-search-text');
        EXCEPTION WHEN OTHERS THEN  -- one line saying what to do, not dblink's stack of errors
            RAISE EXCEPTION 'text search from SQL could not open its loopback connection: %; %', split_part(SQLERRM, E'\n', 1),
                CASE WHEN SQLERRM LIKE '%password%' THEN 'the server let it in without a password, which dblink '
                    'refuses to a role that is not a superuser: point it at an address whose pg_hba.conf asks for one '
                    'with `imgsearch db console-setup --host HOST`' || setup
                ELSE 'check it with `imgsearch db check`, or make it anew with `imgsearch db console-setup`' || setup END
                USING ERRCODE = 'sqlclient_unable_to_establish_sqlconnection';
        END;
    END IF;
    hex := encode(convert_to(query, 'UTF8'), 'hex');  -- only 0-9a-f reaches the loopback's SQL
    LOOP
        IF asked IS NULL OR clock_timestamp() - asked > interval '1 second' THEN
            -- again after a second without an answer: a worker killed with the request claimed
            EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS r(ok text)', dblink, 'imgsearch_text', format(
                'SELECT imgsearch._request_text(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
                model, hex));
            asked := clock_timestamp();
        END IF;
        EXECUTE format('SELECT * FROM %I.dblink(%L, %L) AS a(embedding text, logit_scale double precision, '
            'logit_bias double precision, error text)', dblink, 'imgsearch_text', format(
            'SELECT * FROM imgsearch._text_answer(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
            model, hex)) INTO answer;
        IF answer.embedding IS NOT NULL THEN
            embedding := answer.embedding::vector;
            logit_scale := answer.logit_scale;
            logit_bias := answer.logit_bias;
            RETURN;
        END IF;
        IF answer.error IS NOT NULL THEN
            RAISE EXCEPTION '%', answer.error USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF clock_timestamp() - started > make_interval(secs => timeout) THEN
            SELECT count(*) INTO listening FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.application_name = 'imgsearch text listener';
            IF listening = 0 THEN
                RAISE EXCEPTION 'no imgsearch worker answered within % s: start one with `imgsearch worker` '
                    '(none listens; a worker just started listens once its model is loaded: '
                    '`imgsearch status --wait-worker` waits for it)', timeout
                    USING ERRCODE = 'query_canceled';
            END IF;
            RAISE EXCEPTION 'no imgsearch worker answered within % s (% listening): busy or slow; '
                'SET imgsearch.text_timeout to wait longer, or start more with `imgsearch worker`',
                timeout, listening
                USING ERRCODE = 'query_canceled';
        END IF;
        PERFORM pg_sleep(pause);
        pause := least(pause * 1.5, 0.02);
    END LOOP;
END
$function$;
