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
    timeout numeric;
    started timestamptz := clock_timestamp();
    asked timestamptz;
    pause double precision := 0.001;
    conninfo text;
    listening bigint;
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
    IF NOT ('imgsearch_text' = ANY (coalesce(imgsearch.dblink_get_connections(), '{}'))) THEN
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
            RAISE EXCEPTION 'the loopback server imgsearch_loopback or its user mapping is missing; run imgsearch migrate'
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM imgsearch.dblink_connect('imgsearch_text', conninfo || ' dbname='
            || imgsearch._conninfo_quote(current_database()) || ' application_name=imgsearch-search-text');
    END IF;
    hex := encode(convert_to(query, 'UTF8'), 'hex');  -- only 0-9a-f reaches the loopback's SQL
    LOOP
        IF asked IS NULL OR clock_timestamp() - asked > interval '1 second' THEN
            -- again after a second without an answer: a worker killed with the request claimed
            PERFORM * FROM imgsearch.dblink('imgsearch_text', format(
                'SELECT imgsearch._request_text(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
                model, hex)) AS r(ok text);
            asked := clock_timestamp();
        END IF;
        SELECT * INTO answer FROM imgsearch.dblink('imgsearch_text', format(
            'SELECT * FROM imgsearch._text_answer(%s::smallint, convert_from(decode(%L, ''hex''), ''UTF8''))',
            model, hex)) AS a(embedding text, logit_scale double precision, logit_bias double precision, error text);
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
